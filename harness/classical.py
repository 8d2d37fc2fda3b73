"""A careful classical predictor: the floor a learned engine has to clear by a margin.

Box stage: app.prior's score (ellipse shape prior plus a refitted intensity model) per
class; classes compete by score. The engine feeds the same estimate to its network.

Click stage: app.clickfix's correction at each new click (the voxels intensity-similar to the
click, connected to it, within about twice the error's radius, added or removed); for an empty
mask (no-box start) a box stage on a box sized by the click's blob scale. Classes without a
new click keep prev_pred. All distances are in voxels, as the official click rule.
"""

from __future__ import annotations

import numpy as np

from app.clickfix import correct
from app.io import Box
from app.prior import box_score, grey_levels, histogram

SCALES = (2, 3, 4, 6, 8, 12, 16, 24)  # click_scale candidates, finest-axis voxels


def run(case, state=None, deadline=None) -> np.ndarray:
    """Box stage when there is no previous output, else one correction per newest click."""
    if case.prev_pred is None:
        return box_stage(case.image, case.prompts, case.spacing)
    segs = case.prev_pred.copy()
    for label, prompts in enumerate(case.prompts, 1):
        if not prompts.has_new_click:
            continue
        point, is_fg = prompts.newest_click
        if is_fg and not (segs == label).any():
            seed(segs, case.image, label, point, case.spacing)
        else:
            correct(segs, case.image, label, point, is_fg)
    return segs


# --- box stage ---------------------------------------------------------------------------------------


def box_stage(image: np.ndarray, prompts, spacing) -> np.ndarray:
    """Each voxel goes to the class with the highest positive score."""
    segs = np.zeros(image.shape, np.uint8)
    best = np.zeros(image.shape, np.float32)
    for label, p in enumerate(prompts, 1):
        if p.box is None:
            continue
        window, score = box_score(image, p.box, spacing)
        wins = score > best[window]
        segs[window][wins] = label
        best[window][wins] = score[wins]
    return segs


# --- no-box start -------------------------------------------------------------------------------------


def click_scale(image: np.ndarray, point, aniso: np.ndarray) -> float:
    """The radius (finest-axis voxels) at which a ball around the click contrasts most with the
    shell just outside it: a blob detector on histograms, the object's size for the box stage."""
    best, best_tv = SCALES[0], -1.0
    for r in SCALES:
        radii = r * aniso
        lo = [max(int(p - 1.5 * q) - 1, 0) for p, q in zip(point, radii)]
        hi = [min(int(p + 1.5 * q) + 2, s) for p, q, s in zip(point, radii, image.shape)]
        grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        norm = np.sqrt(sum(((g - p) / q) ** 2 for g, p, q in zip(grids, point, radii)))
        levels = grey_levels(image[tuple(slice(a, b) for a, b in zip(lo, hi))])
        inner, shell = norm <= 0.7, (norm >= 1.0) & (norm <= 1.5)
        if inner.sum() < 5 or shell.sum() < 5:
            continue
        tv = 0.5 * np.abs(histogram(levels[inner]) - histogram(levels[shell])).sum()
        if tv > best_tv:
            best, best_tv = r, tv
    return float(best)


def seed(segs: np.ndarray, image: np.ndarray, label: int, point, spacing) -> None:
    """A first fg click without a mask: the box stage on a box sized by click_scale."""
    spacing = np.asarray(spacing, dtype=float)
    aniso = spacing.min() / spacing
    half = np.maximum(np.round(click_scale(image, point, aniso) * aniso), 1).astype(int)
    lo = [max(p - h, 0) for p, h in zip(point, half)]
    hi = [min(p + h, s - 1) for p, h, s in zip(point, half, image.shape)]
    box = Box(z_min=lo[0], z_max=hi[0], z_mid=point[0], y_min=lo[1], y_max=hi[1], x_min=lo[2], x_max=hi[2])
    window, score = box_score(image, box, spacing)
    segs[window][score > 0] = label
    segs[tuple(point)] = label
