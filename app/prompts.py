"""Prompt encoding: one class's prompts as the network's five input channels on a RoI grid.

Channels (paper 000): image, box cuboid, positive clicks, negative clicks, previous mask.
A missing prompt is an all-zero channel, so the network never branches on absence.
Clicks are balls of a radius in millimetres, and the patch voxel holding the click is
always marked, so a zoomed-out RoI cannot erase a click.
"""

from __future__ import annotations

import numpy as np
import torch

from app.roi import Roi, crop, to_patch

CHANNELS = ("image", "box", "fg", "bg", "prev")
CLICK_RADIUS_MM = 3.0


def normalise(patch: torch.Tensor) -> torch.Tensor:
    """Per-patch z-score: the same look for every modality's 0..255 window."""
    patch = patch.float()
    return ((patch - patch.mean()) / (patch.std() + 1e-3)).clamp_(-5.0, 5.0)


def box_channel(roi: Roi, lo, hi) -> torch.Tensor:
    """1 inside the inclusive cuboid [lo, hi] (image voxels), sampled at the patch voxel centres."""
    inside = [(c >= a - 0.5) & (c <= b + 0.5) for c, a, b in zip(roi.patch_coords(), lo, hi)]
    cuboid = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return torch.from_numpy(cuboid.astype(np.float32))


def click_channel(roi: Roi, clicks, spacing, radius_mm: float = CLICK_RADIUS_MM) -> torch.Tensor:
    """Balls of radius_mm (physical distance) around each (z, y, x) click, on the patch grid."""
    out = np.zeros(roi.patch, dtype=bool)
    coords = roi.patch_coords()
    step = roi.step
    for click in clicks:
        d2 = [((c - v) * s) ** 2 for c, v, s in zip(coords, click, spacing)]
        out |= (d2[0][:, None, None] + d2[1][None, :, None] + d2[2][None, None, :]) <= radius_mm**2
        cell = [int(np.floor((v - s + 0.5) / st)) for v, s, st in zip(click, roi.start, step)]
        if all(0 <= c < p for c, p in zip(cell, roi.patch)):
            out[tuple(cell)] = True
    return torch.from_numpy(out.astype(np.float32))


def encode(image: torch.Tensor, roi: Roi, spacing, box=None, fg=(), bg=(), prev: torch.Tensor | None = None):
    """The (5, *patch) network input for one class.

    image: (D, H, W) tensor of the whole image (any dtype); box: inclusive (lo, hi) or None;
    fg/bg: (z, y, x) clicks in image voxels; prev: (D, H, W) binary mask of the class or None.
    """
    channels = [normalise(to_patch(crop(image[None], roi).float(), roi)[0])]  # crop first: the volume may be large
    channels.append(box_channel(roi, *box) if box is not None else torch.zeros(roi.patch))
    channels.append(click_channel(roi, fg, spacing))
    channels.append(click_channel(roi, bg, spacing))
    if prev is None:
        channels.append(torch.zeros(roi.patch))
    else:
        channels.append((to_patch(crop(prev[None], roi).float(), roi)[0] > 0.5).float())
    return torch.stack([c.to(channels[0].device) for c in channels])
