"""PNG figures for the report: DSC-vs-click curves and prediction overlays (matplotlib Agg)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def write_all(records: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    by_case = defaultdict(list)
    for rec in records:
        by_case[rec["case"]].append(rec)
    for case, recs in by_case.items():
        curves(case, recs, out / f"{case}_dsc.png")
        for mode in sorted({r["mode"] for r in recs}):
            overlay([r for r in recs if r["mode"] == mode], out / f"{case}_{mode}_overlay.png")


def curves(case: str, records: list[dict], path: Path) -> None:
    """DSC per iteration, one line per predictor; box mode solid, no-box dashed."""
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {}
    for rec in records:
        its = rec["iterations"]
        colour = colours.setdefault(rec["predictor"], f"C{len(colours)}")
        ax.plot([r["iteration"] for r in its], [r["dsc"] for r in its], marker="o", color=colour,
                linestyle="-" if rec["mode"] == "box" else "--", label=f"{rec['predictor']} ({rec['mode']})")
    ax.set(title=case, xlabel="iteration (0 = box)", ylabel="mean DSC", ylim=(0, 1.02), xticks=range(6))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _slices(record: dict) -> list[tuple[str, int]]:
    """The box's z_mid (first class with a box; else the first click) and the last click's slice."""
    clicks = [(z, kind) for c in record["clicks"] for kind in ("fg", "bg") for z, _, _ in c[kind]]
    first = record["boxes"][0]["z_mid"] if record["boxes"] else clicks[0][0]
    last = _last_click(record)
    return [("box z_mid" if record["boxes"] else "first click", first),
            ("last click", last[0] if last else first)]


def _last_click(record: dict) -> list[int] | None:
    """The newest click of the highest class that got one in the latest round."""
    for c, order in reversed(list(enumerate(record["clicks_order"]))):
        if order and order[-1]:
            return record["clicks"][c][order[-1]][-1]
    return None


def _view(gts: np.ndarray, margin: int = 12) -> tuple[slice, slice]:
    """In-plane crop around all ground-truth classes: small lesions stay visible on 512 x 512."""
    ys, xs = np.nonzero(gts.any(axis=0))
    return (slice(max(ys.min() - margin, 0), ys.max() + margin + 1),
            slice(max(xs.min() - margin, 0), xs.max() + margin + 1))


def overlay(records: list[dict], path: Path) -> None:
    """One row per predictor: final prediction (red) vs ground truth (green), clicks, box (yellow)."""
    with np.load(records[0]["path"], allow_pickle=True) as data:
        imgs, gts = data["imgs"], data["gts"]
    vy, vx = _view(gts)
    slices = _slices(records[0])
    fig, axes = plt.subplots(len(records), 2, figsize=(8, 4 * len(records)), squeeze=False)
    for row, rec in zip(axes, records):
        with np.load(rec["preds"]) as preds:
            final = preds["final"]
        for ax, (title, z) in zip(row, slices):
            ax.imshow(imgs[z, vy, vx], cmap="gray", vmin=0, vmax=255)
            for mask, colour in ((gts[z, vy, vx], "lime"), (final[z, vy, vx], "red")):
                if mask.any():
                    ax.contour(mask, levels=np.arange(0.5, mask.max() + 1), colors=colour, linewidths=0.8)
            for c in rec["clicks"]:
                for kind, marker, colour in (("fg", "+", "lime"), ("bg", "x", "red")):
                    pts = [(y - vy.start, x - vx.start) for cz, y, x in c[kind] if cz == z]
                    if pts:
                        ax.scatter([p[1] for p in pts], [p[0] for p in pts], marker=marker, c=colour, s=60)
            for box in rec["boxes"] or []:
                if box["z_min"] <= z <= box["z_max"]:
                    corner = (box["z_mid_x_min"] - vx.start - 0.5, box["z_mid_y_min"] - vy.start - 0.5)
                    ax.add_patch(plt.Rectangle(corner, box["z_mid_x_max"] - box["z_mid_x_min"] + 1,
                                               box["z_mid_y_max"] - box["z_mid_y_min"] + 1,
                                               fill=False, edgecolor="yellow", linestyle="--", linewidth=0.8))
            ax.set_title(f"{rec['predictor']}: {title} z={z}, DSC {rec['dsc_final']:.2f}", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{rec['case']} ({rec['mode']}) final prediction red, GT green", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
