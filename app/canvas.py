"""One class's probabilities on a sub-volume that grows to hold every RoI it is given.

The engine pastes the experts' RoI crops onto it (the local pass with a border ramp); the rules
of app.fuse and app.confine reshape its probabilities; the fusion (app.postprocess) reads them.
"""

from __future__ import annotations

import numpy as np
import torch

from app.roi import Roi

BLEND_VOXELS = 6        # local window border ramp, so the paste leaves no seam


class ClassCanvas:
    """One class's probabilities on a sub-volume that grows to hold every RoI it was given."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.lo = np.array(shape)
        self.hi = np.zeros(3, int)
        self.probs = torch.zeros(0, 0, 0)

    def region(self) -> tuple[slice, ...]:
        return tuple(slice(int(a), int(b)) for a, b in zip(self.lo, self.hi))

    def _cover(self, img_sl) -> None:
        lo = np.minimum(self.lo, [s.start for s in img_sl])
        hi = np.maximum(self.hi, [s.stop for s in img_sl])
        if (lo == self.lo).all() and (hi == self.hi).all():
            return
        grown = torch.zeros(tuple(hi - lo))
        if self.probs.numel():
            old = tuple(slice(int(a - b), int(a - b + n)) for a, b, n in zip(self.lo, lo, self.probs.shape))
            grown[old] = self.probs
        self.lo, self.hi, self.probs = lo, hi, grown

    def _local(self, img_sl) -> tuple[slice, ...]:
        return tuple(slice(s.start - int(a), s.stop - int(a)) for s, a in zip(img_sl, self.lo))

    def put(self, logits: torch.Tensor, roi: Roi, weight: torch.Tensor | None = None) -> None:
        """Paste sigmoid(logits) of a RoI crop; with `weight` (crop grid), blend it over what is there."""
        img_sl, crop_sl = roi.image_slices(self.shape)
        self._cover(img_sl)
        target = self.probs[self._local(img_sl)]
        new = torch.sigmoid(logits[crop_sl])
        target.copy_(new if weight is None else weight[crop_sl] * new + (1 - weight[crop_sl]) * target)

    def window(self, img_sl) -> torch.Tensor:
        """The probabilities on an image window, as a view (the canvas grows to hold it)."""
        self._cover(img_sl)
        return self.probs[self._local(img_sl)]

    def mask_on(self, roi: Roi) -> np.ndarray:
        """The class's current binary mask on the RoI's crop grid (zero outside the canvas)."""
        out = np.zeros(roi.size, bool)
        img_sl, _ = roi.image_slices(self.shape)
        lo = np.maximum([s.start for s in img_sl], self.lo)
        hi = np.minimum([s.stop for s in img_sl], self.hi)
        if (hi <= lo).any():
            return out
        src = tuple(slice(int(a - b), int(c - b)) for a, c, b in zip(lo, hi, self.lo))
        dst = tuple(slice(int(a - s), int(c - s)) for a, c, s in zip(lo, hi, roi.start))
        out[dst] = (self.probs[src] > 0.5).numpy()
        return out

    def mask_full(self) -> np.ndarray:
        out = np.zeros(self.shape, bool)
        if self.probs.numel():
            out[self.region()] = (self.probs > 0.5).numpy()
        return out


def border_ramp(size, width: int = BLEND_VOXELS) -> torch.Tensor:
    """1 inside, falling linearly to ~0 at the window faces: the local paste's blend weight."""
    ramps = [torch.clamp(torch.minimum(torch.arange(n) + 1, n - torch.arange(n)).float() / width, 0, 1) for n in size]
    return ramps[0][:, None, None] * ramps[1][None, :, None] * ramps[2][None, None, :]
