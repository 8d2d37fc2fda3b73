"""The organisers' scores, written so that their quirks can be switched on and off.

- DSC and NSD are per ground-truth class (labels in np.unique(gts)[1:]), unweighted mean.
- NSD at 2 mm; the official scorer passes the stored (x, y, z) spacing against (z, y, x)
  arrays (*quirk*): `nsd(..., spacing_xyz[::-1] ...)` is the corrected variant, `spacing_xyz`
  as stored is the official one. NSD counts 0 when the case's mean DSC <= 0.2.
- Surfaces are voxel sets (mask XOR its 6-connected erosion), distances come from a spaced
  EDT on a crop around both masks. The organisers weight surfels by area (DeepMind
  surface-distance), so values can differ from theirs by a few points on coarse masks.
- AUC: trapezoid with unit step over click iterations 1..5 (max 4.0); time rule: a case
  whose summed run time exceeds 90 s x K scores 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

NSD_TOLERANCE_MM = 2.0
NSD_MIN_DSC = 0.2
SECONDS_PER_CLASS = 90.0


def dsc(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (never reached for GT classes)."""
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _crop(*masks: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the union, one voxel wider so the erosion sees the outside."""
    coords = np.argwhere(np.logical_or.reduce(masks))
    lo = np.maximum(coords.min(axis=0) - 1, 0)
    hi = coords.max(axis=0) + 2
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def nsd(pred: np.ndarray, truth: np.ndarray, sampling, tolerance: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice of two boolean masks, `sampling` = mm per array axis."""
    if not pred.any() or not truth.any():
        return float(pred.any() == truth.any())
    window = _crop(pred, truth)
    surf_p, surf_t = _surface(pred[window]), _surface(truth[window])
    to_p = ndimage.distance_transform_edt(~surf_p, sampling=sampling)
    to_t = ndimage.distance_transform_edt(~surf_t, sampling=sampling)
    hits = int((to_t[surf_p] <= tolerance).sum()) + int((to_p[surf_t] <= tolerance).sum())
    return hits / (int(surf_p.sum()) + int(surf_t.sum()))


def dsc_scores(segs: np.ndarray, gts: np.ndarray) -> dict:
    """Per-class DSC over the ground truth's labels, and their mean."""
    dscs = [dsc(segs == label, gts == label) for label in truth_labels(gts)]
    return {"dsc": float(np.mean(dscs)), "dsc_per_class": dscs}


def truth_labels(gts: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(gts) if v != 0]


def score(segs: np.ndarray, gts: np.ndarray, spacing_xyz) -> dict:
    """Per-class and mean DSC, official NSD (quirk) and corrected NSD for one prediction."""
    spacing_xyz = np.asarray(spacing_xyz, dtype=float)
    labels = truth_labels(gts)
    out = dsc_scores(segs, gts)
    mean_dsc = out["dsc"]
    for key, sampling in (("nsd", spacing_xyz), ("nsd_corrected", spacing_xyz[::-1])):
        if mean_dsc <= NSD_MIN_DSC:
            values = [0.0] * len(labels)
        else:
            values = [nsd(segs == label, gts == label, sampling) for label in labels]
        out[key] = float(np.mean(values))
        out[f"{key}_per_class"] = values
    return out


def auc(values_by_click: list[float]) -> float:
    """Trapezoid, unit step, over the click iterations (1..5 -> max 4.0)."""
    v = np.asarray(values_by_click, dtype=float)
    return float(((v[1:] + v[:-1]) / 2).sum())


def over_time_budget(seconds: list[float], num_classes: int) -> bool:
    """The organisers' rule: the case scores 0 when all its runs took more than 90 s x K."""
    return float(sum(seconds)) > SECONDS_PER_CLASS * num_classes


def summarise(iterations: list[dict], num_classes: int) -> dict:
    """Case-level scores from per-iteration records (iteration 0 may be absent: no-box)."""
    by_it = {rec["iteration"]: rec for rec in iterations}
    clicks = [by_it[i] for i in sorted(by_it) if i >= 1]
    seconds = [rec["seconds"] for rec in iterations]
    raw = {
        "dsc_iter0": by_it[0]["dsc"] if 0 in by_it else None,
        "dsc_auc": auc([rec["dsc"] for rec in clicks]),
        "dsc_final": clicks[-1]["dsc"],
        "nsd_auc": auc([rec["nsd"] for rec in clicks]),
        "nsd_final": clicks[-1]["nsd"],
        "nsd_corrected_final": clicks[-1]["nsd_corrected"],
    }
    over = over_time_budget(seconds, num_classes)
    timed = {f"{key}_timed": (0.0 if over and value is not None else value) for key, value in raw.items()}
    return {**raw, **timed, "seconds": float(sum(seconds)), "budget_s": SECONDS_PER_CLASS * num_classes,
            "over_budget": over}


def per_class(iterations: list[dict], num_classes: int) -> list[dict]:
    """Class-level scores (class i is label i + 1), computed as summarise does for the case mean."""
    by_it = {rec["iteration"]: rec for rec in iterations}
    clicks = [by_it[i] for i in sorted(by_it) if i >= 1]
    out = []
    for c in range(num_classes):
        dsc_clicks = [rec["dsc_per_class"][c] for rec in clicks]
        nsd_clicks = [rec["nsd_per_class"][c] for rec in clicks]
        out.append({
            "label": c + 1,
            "dsc_iter0": by_it[0]["dsc_per_class"][c] if 0 in by_it else None,
            "dsc_auc": auc(dsc_clicks),
            "dsc_final": dsc_clicks[-1],
            "nsd_auc": auc(nsd_clicks),
            "nsd_final": nsd_clicks[-1],
        })
    return out
