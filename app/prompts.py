"""Prompt encoding: one class's prompts, and the other classes', as the network's input channels.

Channels (paper 000): image, box cuboid, positive clicks, negative clicks, previous mask; then
the other classes (issue 9): how many of their boxes cover a voxel, and the voxels they hold in
the previous segmentation. A parcel of one shared intensity is told from its neighbours only by
where they are, which one class's own prompts never show. Last, the boxes of the classes whose
box contains this one's (a white matter around a cortex parcel, an organ around its lesion) and
of those whose box it contains (app.views.contains_box): without them a cortex parcel's box looks
like a lobe's, whose truth takes the white matter too, so the network hedged between the two.
A missing prompt is an all-zero channel, so the network never branches on absence.
A click is the union of a ball of CLICK_RADIUS_MM (physical) and a ball of
CLICK_RADIUS_PATCH patch voxels: in a zoomed-out RoI a 3 mm ball shrinks to one voxel out
of 110k and the network barely reacts to it (issue 9); two patch voxels keep it visible
at any zoom, as nnInteractive-style encoders do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from app.roi import Roi, crop, crop_image, to_patch

CHANNELS = ("image", "box", "fg", "bg", "prev", "other_boxes", "other_masks", "container_boxes", "content_boxes")
CLICK_RADIUS_MM = 3.0
CLICK_RADIUS_PATCH = 2.0


def normalise(patch: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Per-patch z-score: the same look for every modality's 0..255 window.

    `inside` (the fraction of each patch voxel that holds image content) weights the
    statistics, so that the zeros padding a RoI beyond the field of view do not set them."""
    patch = patch.float()
    total = inside.sum().clamp_min(1.0)
    mean = (patch * inside).sum() / total
    std = (((patch - mean) ** 2 * inside).sum() / total).sqrt()
    return ((patch - mean) / (std + 1e-3)).clamp_(-5.0, 5.0)


def in_plane_fraction(roi: Roi, shape) -> torch.Tensor:
    """On the patch grid: the fraction of each voxel's footprint inside the in-plane field of
    view (beyond the z ends app.roi.crop_image repeats slices, which is content). Separable, so
    built from two 1D profiles: a zoomed body RoI's crop grid is ~85 M voxels."""
    profiles = []
    for axis in (1, 2):
        inside = torch.zeros(roi.size[axis])
        inside[roi.image_slices(tuple(shape))[1][axis]] = 1.0
        profiles.append(F.adaptive_avg_pool1d(inside[None, None], roi.patch[axis])[0, 0] if roi.zoomed else inside)
    return (profiles[0][:, None] * profiles[1][None, :]).expand(roi.patch)


def box_channel(roi: Roi, lo, hi) -> torch.Tensor:
    """1 inside the inclusive cuboid [lo, hi] (image voxels), sampled at the patch voxel centres."""
    inside = [(c >= a - 0.5) & (c <= b + 0.5) for c, a, b in zip(roi.patch_coords(), lo, hi)]
    cuboid = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return torch.from_numpy(cuboid.astype(np.float32))


def click_channel(roi: Roi, clicks, spacing, radius_mm: float = CLICK_RADIUS_MM,
                  radius_patch: float = CLICK_RADIUS_PATCH) -> torch.Tensor:
    """Balls around each (z, y, x) click on the patch grid: within radius_mm or radius_patch."""
    out = np.zeros(roi.patch, dtype=bool)
    coords = roi.patch_coords()
    for click in clicks:
        mm = [((c - v) * s) ** 2 / radius_mm**2 for c, v, s in zip(coords, click, spacing)]
        vox = [((c - v) / st) ** 2 / radius_patch**2 for c, v, st in zip(coords, click, roi.step)]
        out |= (mm[0][:, None, None] + mm[1][None, :, None] + mm[2][None, None, :]) <= 1.0
        out |= (vox[0][:, None, None] + vox[1][None, :, None] + vox[2][None, None, :]) <= 1.0
    return torch.from_numpy(out.astype(np.float32))


@dataclass(frozen=True)
class Others:
    """The other classes of a case as one class's network sees them."""

    boxes: tuple = ()  # their inclusive (lo, hi) boxes, containers' and contents' left out
    labels: np.ndarray | None = None  # the previous segmentation (D, H, W), every class's label
    label: int = 0  # the class's own label there, which is not another's
    containers: tuple = ()  # the inclusive boxes of the classes whose box contains its own
    contents: tuple = ()  # the inclusive boxes of the classes whose box its own contains


def boxes_channel(roi: Roi, boxes) -> torch.Tensor:
    """1 - 0.5^n where n boxes cover a voxel: bounded, and still telling one box from several
    (a cortex parcel lies under many of its neighbours' boxes)."""
    count = sum((box_channel(roi, *b) for b in boxes), torch.zeros(roi.patch))
    return 1.0 - 0.5**count


def held_channel(roi: Roi, labels: np.ndarray, label: int) -> torch.Tensor:
    """The voxels another class holds in the previous segmentation (cropped before comparing:
    the volume may be large)."""
    crop_ = crop(torch.from_numpy(labels)[None], roi)
    held = (crop_ != 0) & (crop_ != label)
    return (to_patch(held.float(), roi)[0] > 0.5).float()


def encode(image: torch.Tensor, roi: Roi, spacing, box=None, fg=(), bg=(), prev: torch.Tensor | None = None,
           prev_on_crop: bool = False, others: Others | None = None):
    """The (len(CHANNELS), *patch) network input for one class.

    image: (D, H, W) tensor of the whole image (any dtype); box: inclusive (lo, hi) or None;
    fg/bg: (z, y, x) clicks in image voxels; prev: binary mask of the class or None, on the
    whole image (D, H, W), or already on the RoI's crop grid with prev_on_crop (no
    full-volume copy for a local window); others: the other classes, or None for none.
    """
    inside = in_plane_fraction(roi, image.shape)
    crop_ = crop_image(image, roi).float()  # crop first: the volume may be large
    channels = [normalise(to_patch(crop_[None], roi)[0], inside)]
    channels.append(box_channel(roi, *box) if box is not None else torch.zeros(roi.patch))
    channels.append(click_channel(roi, fg, spacing))
    channels.append(click_channel(roi, bg, spacing))
    if prev is None:
        channels.append(torch.zeros(roi.patch))
    else:
        prev_crop = prev[None] if prev_on_crop else crop(prev[None], roi)
        channels.append((to_patch(prev_crop.float(), roi)[0] > 0.5).float())
    others = others or Others()
    channels.append(boxes_channel(roi, others.boxes))
    channels.append(torch.zeros(roi.patch) if others.labels is None else held_channel(roi, others.labels, others.label))
    channels.append(boxes_channel(roi, others.containers))
    channels.append(boxes_channel(roi, others.contents))
    return torch.stack([c.to(channels[0].device) for c in channels])
