"""The classical click correction: the engine's guard for a click the network did not follow.

The official click sits at the deepest voxel of the largest error, so its distance to the
current mask (fg) or to the mask boundary (bg) bounds the error's radius. The correction adds
(removes) the voxels that are intensity-similar to the click, connected to it and within about
twice that radius; a click one voxel from the mask marks a sliver of the boundary, so only
the click and its face neighbours on the mask's surface layer change (valset nuclei, no box,
with this rule at every depth: clicks lowering DSC 65 -> 52 of 198, DSC_AUC 3.764 -> 3.785;
kept for slivers only, as deeper errors are missed parts that run beyond the mask's reach).
Why in the engine: on the valset the network left the clicked voxel itself wrong after a
third of the clicks on large organs (an abdomen body: 4 of 5), and where it did
follow a click it moved the mask little; so the engine applies this correction around every
click, where the network is not sure of the opposite (ClassSegmenter.follow_click). All
distances are in voxels, as the official click rule.
"""

from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage

MAX_RADIUS = 25  # voxels, cap of any click correction
MIN_TOLERANCE = 8.0  # grey levels
GROW_FRACTION = 0.5
SURFACE_LAYER = 1.5  # voxels: a face or edge neighbour of the mask (fg), of the outside (bg)


def correct(segs: np.ndarray, image: np.ndarray, label: int, point, is_fg: bool) -> None:
    """Add (fg) or remove (bg) the click's error region, in place."""
    lo = [max(p - MAX_RADIUS - 1, 0) for p in point]
    hi = [min(p + MAX_RADIUS + 2, s) for p, s in zip(point, image.shape)]
    window = tuple(slice(a, b) for a, b in zip(lo, hi))
    local = tuple(p - a for p, a in zip(point, lo))
    region = segs[window]
    mask = region == label
    grids = np.ogrid[window]
    dist = np.sqrt(sum((g - p) ** 2 for g, p in zip(grids, point)))
    # fg: the error lies outside the mask, bg: inside; its depth is at most the distance across.
    across = dist[mask] if is_fg else dist[~mask]
    depth = float(across.min()) if across.size else np.inf
    similar = similar_component(image[window].astype(np.float32), local, mask if is_fg else None)
    reach = min(2.0 * max(depth, 1.0), grow_radius(similar, dist) + 1.0)
    change = similar & (dist <= reach)
    if depth <= 1.0:  # a sliver: only the click's face neighbours on the mask's surface layer
        change &= (dist <= 1.0) & (ndimage.distance_transform_edt(~mask if is_fg else mask) <= SURFACE_LAYER)
    if is_fg:
        region[change] = label  # the click itself is always in `change`
    else:
        region[(change | (dist < depth)) & mask] = 0


def similar_component(img: np.ndarray, local: tuple, reference: np.ndarray | None) -> np.ndarray:
    """Voxels like the click's neighbourhood, 26-connected to the click. The tolerance is the
    class's robust spread when the class has voxels here, else the image noise: a plain std
    next to an edge would span both sides of it."""
    smooth = ndimage.gaussian_filter(img, 0.7)
    near = tuple(slice(max(p - 1, 0), p + 2) for p in local)
    if reference is not None and reference.sum() >= 30:
        spread = robust_sigma(img[reference])
    else:
        spread = robust_sigma(img - ndimage.gaussian_filter(img, 1.0))
    tolerance = max(2.5 * spread, MIN_TOLERANCE)
    similar = np.abs(smooth - float(np.median(img[near]))) <= tolerance
    similar[local] = True
    components = cc3d.connected_components(similar.astype(np.uint8), connectivity=26)
    return components == components[local]


def robust_sigma(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def grow_radius(component: np.ndarray, dist: np.ndarray) -> float:
    """The first shell radius around the click where less than half of the shell is in the component."""
    shells = np.floor(dist).astype(np.int64)
    total = np.bincount(shells.ravel())
    inside = np.bincount(shells[component], minlength=total.size)
    frac = inside[1:] / np.maximum(total[1:], 1)
    low = np.flatnonzero(frac < GROW_FRACTION)
    return float(low[0] + 1) if low.size else float(MAX_RADIUS)
