"""A RoI where none was given: grow it from what the expert already found.

Without a box the first view is a native window at the positive click. When the
predicted object touches a side of that view (and the image goes on beyond it), the
object is larger than the view: the RoI is regrown around the clicks plus the predicted
mask, zoomed out by the content-aware rule, and predicted again. The same check catches a
box that cut the object short.
"""

from __future__ import annotations

import numpy as np

from app.roi import Roi, bounding_box


def touches_open_side(mask: np.ndarray, roi: Roi, image_shape) -> bool:
    """True when the mask (on the RoI's crop grid) reaches a crop face that lies inside the image."""
    img_sl, crop_sl = roi.image_slices(tuple(image_shape))
    inside = mask[crop_sl]
    for axis in range(3):
        if inside.shape[axis] == 0:
            return False
        first = np.take(inside, 0, axis=axis).any() and img_sl[axis].start > 0
        last = np.take(inside, -1, axis=axis).any() and img_sl[axis].stop < image_shape[axis]
        if first or last:
            return True
    return False


def grown_bounds(mask: np.ndarray, roi: Roi, image_shape, lo, hi):
    """Prompt bounds (lo, hi) widened to the extent of the mask's part inside the image.

    The crop may reach outside the image (zero padding); a prediction there is no object.
    """
    img_sl, crop_sl = roi.image_slices(tuple(image_shape))
    found = bounding_box(mask[crop_sl])
    if found is None:
        return np.asarray(lo), np.asarray(hi)
    start = np.array([s.start for s in img_sl])
    return np.minimum(lo, found[0] + start), np.maximum(hi, found[1] + start)


def intensity_box(image: np.ndarray, spacing, click, reach_mm: float = 40.0):
    """A first box for a class known only by a positive click: the bounding box of the
    connected region of intensity like the click's (paper 002's intensity candidate, made
    local), or None when that region is not an object (it floods most of the search crop).
    """
    from scipy import ndimage

    half = np.maximum(np.ceil(reach_mm / np.asarray(spacing, float)).astype(int), 2)
    sl = tuple(slice(max(c - h, 0), c + h + 1) for c, h in zip(click, half))
    crop = ndimage.gaussian_filter(image[sl].astype(np.float32), 1.0)
    local = tuple(c - s.start for c, s in zip(click, sl))
    near = crop[tuple(slice(max(v - 2, 0), v + 3) for v in local)]
    tolerance = max(3.0 * float(near.std()), 12.0)
    similar = ndimage.binary_closing(np.abs(crop - float(near.mean())) <= tolerance, iterations=1)
    regions, _ = ndimage.label(similar)
    region = regions == regions[local]
    if not regions[local] or region.mean() > 0.5:
        return None
    lo, hi = bounding_box(region)
    start = np.array([s.start for s in sl])
    return lo + start, hi + start
