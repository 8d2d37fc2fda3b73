"""The organisers' prompt simulation, written once for the harness and for training.

Replicates ../shared/docs/challenge-contract.md, quirks included:
- boxes: z extent of the class plus a 2D box on the slice of the MEDIAN foreground
  voxel (not the middle of the z range), widened by one random shift per box
  (numpy seed 2025) scaled by W/256 in x and H/256 in y, clipped to the image;
- clicks: per class, the largest 26-connected component of the error, its
  Euclidean distance transform (voxel units, component cropped and zero-padded),
  a voxel of maximal distance chosen with numpy seed 42; fg where the ground truth
  is the class, else bg. The same error gives the same click again.
"""

from __future__ import annotations

import cc3d
import edt
import numpy as np

BOX_SEED = 2025
CLICK_SEED = 42
MAX_BOX_SHIFT = 5  # s in 0..5 voxels at 256 px


def box_from_mask(mask: np.ndarray, shift: int) -> dict:
    """One organiser-style box dict (inclusive, array axes) for a non-empty boolean mask."""
    zs = np.where(mask)[0]
    z_mid = int(zs[zs.size // 2])
    _, height, width = mask.shape
    ys, xs = np.nonzero(mask[z_mid])
    dx, dy = int(shift * width / 256), int(shift * height / 256)
    return {
        "z_min": np.int64(zs.min()),
        "z_max": np.int64(zs.max()),
        "z_mid": np.int64(z_mid),
        "z_mid_x_min": np.int64(max(0, xs.min() - dx)),
        "z_mid_y_min": np.int64(max(0, ys.min() - dy)),
        "z_mid_x_max": np.int64(min(width - 1, xs.max() + dx)),
        "z_mid_y_max": np.int64(min(height - 1, ys.max() + dy)),
    }


def boxes_from_labels(gts: np.ndarray, seed: int = BOX_SEED) -> np.ndarray:
    """Object array of box dicts, one per label in np.unique(gts)[1:] order."""
    rng = np.random.RandomState(seed)
    labels = [int(v) for v in np.unique(gts) if v != 0]
    boxes = [box_from_mask(gts == label, int(rng.randint(0, MAX_BOX_SHIFT + 1))) for label in labels]
    out = np.empty(len(boxes), dtype=object)
    out[:] = boxes
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty if the mask is)."""
    components, n = cc3d.connected_components(mask.astype(np.uint8), connectivity=26, return_N=True)
    if n <= 1:
        return components > 0
    counts = np.bincount(components.ravel())
    counts[0] = 0
    return components == int(np.argmax(counts))


def deepest_voxel(component: np.ndarray, seed: int = CLICK_SEED) -> tuple[int, int, int]:
    """A voxel of maximal EDT depth inside a non-empty component, ties broken with a fixed seed."""
    coords = np.argwhere(component)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    crop = np.pad(component[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.uint8), 1)
    dist = edt.edt(crop, black_border=True, order="C", parallel=1)[1:-1, 1:-1, 1:-1]
    candidates = np.argwhere(dist == dist.max())
    pick = candidates[np.random.RandomState(seed).randint(len(candidates))]
    return tuple(int(v) for v in pick + lo)


def error_click(pred: np.ndarray, truth: np.ndarray) -> tuple[tuple[int, int, int], bool] | None:
    """The official next click for one class: (zyx, is_fg), or None when the class is perfect."""
    error = pred != truth
    if not error.any():
        return None
    zyx = deepest_voxel(largest_component(error))
    return zyx, bool(truth[zyx])


def add_clicks(segs: np.ndarray, gts: np.ndarray, clicks: list[dict], clicks_order: list[list]) -> None:
    """Append one round of official clicks in place (class i is label i+1)."""
    for index, (class_clicks, order) in enumerate(zip(clicks, clicks_order)):
        label = index + 1
        click = error_click(segs == label, gts == label)
        if click is None:
            order.append(None)
            continue
        zyx, is_fg = click
        kind = "fg" if is_fg else "bg"
        class_clicks[kind].append(list(zyx))
        order.append(kind)
