"""What a click may change: the previous mask is kept except where the newest click's error is.

The network redraws a whole mask every round and drifts; the organisers' click only says where
the largest error is (../shared/docs/challenge-contract.md). These rules blend the network's redraw with
the previous mask by the click's error radius, its direction, and the other classes' claims.
"""

from __future__ import annotations

import cc3d
import numpy as np
import torch
from scipy import ndimage

from app.canvas import ClassCanvas
from app.views import ClassView

CONFINE_FACTOR = 2.0    # a click may change the previous mask within 2 x its error radius
CONFINE_SLACK_MM = 3.0  # ... plus this, with a soft edge of the same width
CONFINE_REACH_MM = 60.0


def error_radius_mm(prev: np.ndarray, click, spacing, reach_mm: float = CONFINE_REACH_MM) -> float:
    """Distance from the click to the nearest voxel whose previous state differs, in mm.

    The official click sits at the deepest point of the largest error, so this is about
    that error's radius. Measured on a crop around the click; `reach_mm` when nothing differs.
    """
    spacing = np.asarray(spacing, float)
    half = np.ceil(reach_mm / spacing).astype(int)
    sl = tuple(slice(max(c - h, 0), c + h + 1) for c, h in zip(click, half))
    crop = prev[sl]
    local = tuple(c - s.start for c, s in zip(click, sl))
    same = crop == crop[local]
    if same.all():
        return reach_mm
    return float(min(ndimage.distance_transform_edt(same, sampling=spacing)[local], reach_mm))


def confine_to_click(canvas: ClassCanvas, view: ClassView, prev: np.ndarray, free: np.ndarray, spacing,
                     grow: bool = True) -> None:
    """Keep the previous mask except in a ball around the newest click sized by the error it marks.

    The network redraws the whole mask every round and drifts (large organs shrink round by
    round); the organisers' click only says where the largest error is. Only for a class with a
    box: without one the clicks are all there is of the object, and a click on a missed vessel
    branch must be free to add the branch (valset no-box DSC_AUC 2.061 confined, 2.300 free).
    For the same reason a fg click keeps what the network added in one piece with the ball
    (grown_from): a missed rib or lobe runs beyond it (valset box DSC_AUC 2.631 -> 2.650,
    thin 0.207 -> 0.222); a bg click's removals stay in the ball, as shrinking is the drift.
    Not with `grow` False (a parcel outside CT, ClassView.parcel): there the additions ran along
    the grey matter it shares with its neighbours (without them, valset cortex parcels: clicks
    lowering DSC 14 -> 2 of 70, DSC_AUC 3.109 -> 3.140; lobar parcels 3.490 -> 3.476; PET equal).
    `prev`: the previous mask (full volume); `free`: claimed_balls on the canvas region.
    """
    click = view.prompts.newest_click[0]
    weight = click_ball(canvas, prev, click, spacing)
    old = prev[canvas.region()]
    if view.prompts.newest_click[1] and grow:
        weight = np.maximum(weight, grown_from(canvas, old, weight > 0))
    weight = torch.from_numpy(np.maximum(weight, free))
    canvas.probs = weight * canvas.probs + (1 - weight) * torch.from_numpy(old.astype(np.float32))


def keep_click_direction(canvas: ClassCanvas, view: ClassView, prev: np.ndarray, free: np.ndarray) -> None:
    """A positive click only adds to the previous mask and a negative one only removes from it,
    except in the balls at other classes' new positive clicks, which the class may give up.

    Why: the click says where the largest error is, not that the rest of the mask was wrong;
    the network still redrew it (a positive click on an ultrasound organ removed 1691 voxels).
    Alone (an earlier engine) it lowered the US organ; with confine_to_sliver (then keeping the
    click's face neighbours too) and the clickfix sliver rule, valset (shipped weights): box
    DSC_AUC / DSC_Final 3.105 / 0.791 -> 3.112 / 0.799, no box 2.798 / 0.786 -> 2.803 / 0.801,
    clicks lowering DSC 43 -> 28 of 265 with a box and 65 -> 34 of 212 without (the US lesion
    3.214 -> 3.385)."""
    old = torch.from_numpy(prev[canvas.region()].astype(np.float32))
    kept = (torch.maximum if view.prompts.newest_click[1] else torch.minimum)(canvas.probs, old)
    free = torch.from_numpy(free)
    canvas.probs = free * canvas.probs + (1 - free) * kept


def confine_to_sliver(canvas: ClassCanvas, view: ClassView, prev: np.ndarray, free: np.ndarray) -> bool:
    """A click one voxel from where the previous mask turns right marks a sliver of the boundary
    (the organisers click the deepest voxel of the largest error): the previous mask stays, the
    clicked voxel flipped (and the balls at other classes' new positive clicks free). Why: on
    nuclei and lesions at DSC 0.85 to 0.98 such clicks are most of them, and the network's
    redraw moved tens of voxels for an error of a few. Valset, in the full set of rules: clicks
    lowering DSC without a box 34 -> 3 of 210, with a box 26 -> 22 of 265, box DSC_AUC 3.215 ->
    3.213 (the click's face neighbours too: 34 and 26; without this rule the nuclei: 52 of 198).
    True when it ran."""
    point, is_fg = view.prompts.newest_click
    if error_radius_mm(prev, point, (1.0, 1.0, 1.0)) > 1.0:
        return False
    free = torch.from_numpy(free)
    canvas.probs = free * canvas.probs + (1 - free) * torch.from_numpy(prev[canvas.region()].astype(np.float32))
    local = tuple(p - lo for p, lo in zip(point, canvas.lo))
    if all(0 <= q < n for q, n in zip(local, canvas.probs.shape)):
        canvas.probs[local] = float(is_fg)
    return True


def claimed_balls(canvas: ClassCanvas, view: ClassView, prev: np.ndarray, spacing) -> np.ndarray:
    """1 in the click_ball of every other class's new positive click inside the previous mask
    (on the canvas region): voxels this class must be free to give up."""
    weight = np.zeros(tuple(canvas.hi - canvas.lo), np.float32)
    for other in view.claimed:
        if prev[other]:
            weight = np.maximum(weight, click_ball(canvas, prev, other, spacing))
    return weight


def click_ball(canvas: ClassCanvas, prev: np.ndarray, click, spacing) -> np.ndarray:
    """1 within CONFINE_FACTOR x the click's error radius (+ slack) of the click, on the canvas region,
    falling to 0 over CONFINE_SLACK_MM."""
    radius = CONFINE_FACTOR * error_radius_mm(prev, click, spacing) + CONFINE_SLACK_MM
    coords = [(np.arange(lo, hi) - c) * s for lo, hi, c, s in zip(canvas.lo, canvas.hi, click, spacing)]
    dist = np.sqrt(coords[0][:, None, None] ** 2 + coords[1][None, :, None] ** 2 + coords[2][None, None, :] ** 2)
    return np.clip((radius + CONFINE_SLACK_MM - dist) / CONFINE_SLACK_MM, 0, 1).astype(np.float32)


def grown_from(canvas: ClassCanvas, old: np.ndarray, ball: np.ndarray) -> np.ndarray:
    """1 on the network's additions to the previous mask (`old`, on the canvas region) that are
    connected to the click's ball."""
    added = (canvas.probs > 0.5).numpy() & ~old
    pieces = cc3d.connected_components(added.astype(np.uint8), connectivity=26)
    touching = np.unique(pieces[ball & added])
    return np.isin(pieces, touching[touching > 0]).astype(np.float32)
