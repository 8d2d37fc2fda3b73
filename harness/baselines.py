"""Reference predictors with the engine's signature, run through predict.sh like the engine.

They bound what the engine must beat: `boxfill` (each class = its box cuboid) and
`boxfill_clicks` (the cuboid plus fg balls, minus bg balls). Select them with
SEGFM_ENGINE=harness.baselines:boxfill etc.; the careful classical method is
harness.classical:run.
"""

from __future__ import annotations

import numpy as np

CLICK_RADIUS_MM = 4.0


def ball(shape, center, radii) -> tuple[tuple[slice, ...], np.ndarray]:
    """An ellipsoid of per-axis radii (voxels) around `center`, as (window, mask in window)."""
    radii = np.maximum(np.asarray(radii, dtype=float), 0.5)
    lo = [max(int(np.floor(c - r)), 0) for c, r in zip(center, radii)]
    hi = [min(int(np.ceil(c + r)) + 1, s) for c, r, s in zip(center, radii, shape)]
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    dist2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii))
    return tuple(slice(a, b) for a, b in zip(lo, hi)), dist2 <= 1.0


def paint_boxes(case) -> np.ndarray:
    """Box cuboids, largest first so that small classes inside large ones stay visible."""
    segs = np.zeros(case.image.shape, np.uint8)
    boxed = [(label, p.box) for label, p in enumerate(case.prompts, 1) if p.box is not None]
    for label, box in sorted(boxed, key=lambda lb: -np.prod([s.stop - s.start for s in lb[1].slices()])):
        segs[box.slices()] = label
    return segs


def replay_clicks(segs: np.ndarray, label: int, prompts, radii) -> None:
    """Apply every click of a class in its clicks_order: fg balls set it, bg balls clear it."""
    queues = {"fg": iter(prompts.fg), "bg": iter(prompts.bg)}
    for kind in prompts.order:
        point = next(queues[kind], None) if kind else None
        if point is None:
            continue
        window, inside = ball(segs.shape, point, radii)
        region = segs[window]
        if kind == "fg":
            region[inside] = label
        else:
            region[inside & (region == label)] = 0


def boxfill(case, state=None, deadline=None) -> np.ndarray:
    """Each class is its box cuboid; without boxes, the previous prediction (or nothing)."""
    if case.has_boxes:
        return paint_boxes(case)
    return case.prev_pred if case.prev_pred is not None else np.zeros(case.image.shape, np.uint8)


def boxfill_clicks(case, state=None, deadline=None) -> np.ndarray:
    """Box cuboids, then every click as a ball of CLICK_RADIUS_MM (stateless, replayed each run)."""
    segs = paint_boxes(case)
    radii = CLICK_RADIUS_MM / np.asarray(case.spacing, dtype=float)
    for label, prompts in enumerate(case.prompts, 1):
        replay_clicks(segs, label, prompts, radii)
    return segs
