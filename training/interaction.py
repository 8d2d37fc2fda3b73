"""Interaction simulation for training: boxes, clicks and previous masks like the challenge's.

Boxes follow the organisers' rule (harness.official) with extra jitter now and then; clicks
mix the official EDT-maximum click with the papers' samplers (Gaussian centre/edge
sampling of paper 001, boundary-attenuated sampling of paper 003); previous masks come
from the model itself (no grad, hard-binarised, paper 000) or from a perturbed truth.
"""

from __future__ import annotations

import cc3d
import edt
import numpy as np
from scipy import ndimage

from app.io import Box
from app.roi import bounding_box
from app.views import contains_box
from harness.official import MAX_BOX_SHIFT, box_from_mask, error_click, largest_component
from training.synth import smooth_noise

MARGIN = 3  # voxels around another class's box where its negative clicks may land
CONTAINER_WEIGHT = 3.0  # how much more often a class whose box contains two or more boxes is the target


def jittered_box(rng: np.random.Generator, mask: np.ndarray) -> Box:
    """An organiser-style box, sometimes widened further (annotators are not exact)."""
    shift = int(rng.integers(0, MAX_BOX_SHIFT + 1))
    if rng.random() < 0.2:
        shift += int(rng.integers(1, 12))
    b = box_from_mask(mask, shift)
    return Box(int(b["z_min"]), int(b["z_max"]), int(b["z_mid"]), int(b["z_mid_y_min"]), int(b["z_mid_y_max"]),
               int(b["z_mid_x_min"]), int(b["z_mid_x_max"]))


def sampled_click(rng: np.random.Generator, pred: np.ndarray, truth: np.ndarray, spacing):
    """A click on the error: the official one most of the time, else a depth-weighted random voxel.

    The alternative picks a random error component (weighted by size) and a voxel with
    probability rising with its depth: Gaussian around the centre or flat towards the edge.
    """
    if rng.random() < 0.7:
        return error_click(pred, truth)
    error = pred != truth
    if not error.any():
        return None
    component = largest_component(error) if rng.random() < 0.5 else error
    anisotropy = tuple(float(s) for s in spacing)
    depth = edt.edt(np.pad(component, 1).astype(np.uint8), anisotropy=anisotropy)[1:-1, 1:-1, 1:-1]
    coords = np.argwhere(component)
    d = depth[tuple(coords.T)]
    sigma = max(d.max() * rng.uniform(0.2, 1.0), 1e-3)
    weights = np.exp(-((d.max() - d) ** 2) / (2 * sigma**2))
    zyx = tuple(int(v) for v in coords[rng.choice(len(coords), p=weights / weights.sum())])
    return zyx, bool(truth[zyx])


def perturbed_mask(rng: np.random.Generator, truth: np.ndarray, spacing) -> np.ndarray:
    """A plausible wrong previous mask: the truth's boundary moved by smooth noise, shifted, partly lost."""
    sd = edt.sdf(truth.astype(np.uint8), anisotropy=tuple(float(s) for s in spacing))
    scale = max(np.abs(sd[truth]).max() if truth.any() else 1.0, 1.0)
    amplitude = scale * rng.uniform(0.1, 0.8)
    mask = sd + amplitude * smooth_noise(rng, truth.shape, int(rng.integers(2, 8))) + rng.normal(0, 0.2) * scale > 0
    if rng.random() < 0.3:
        mask = np.roll(mask, tuple(int(v) for v in rng.integers(-3, 4, 3)), axis=(0, 1, 2))
    return mask


def other_click(rng: np.random.Generator, truth: np.ndarray, near: np.ndarray, box: Box | None):
    """Another class's click in the round the target is clicked, as its own correction would put it.

    Mostly positive, inside its object, and half of those where `near` (the target's mask) took it:
    the voxels the target must give up. Else negative: outside its object, in its box or its
    object's bounds widened by MARGIN voxels (an over-reach, often into a neighbour).
    """
    if rng.random() < 0.6:
        taken = truth & near
        pool = taken if rng.random() < 0.5 and taken.any() else truth
        return random_voxel(rng, pool), True
    if box is not None:
        lo, hi = box.bounds()
    else:
        coords = np.argwhere(truth)
        lo, hi = coords.min(0), coords.max(0)
    region = np.zeros_like(truth)
    region[tuple(slice(max(a - MARGIN, 0), b + MARGIN + 1) for a, b in zip(lo, hi))] = True
    region &= ~truth
    return (random_voxel(rng, region), False) if region.any() else (random_voxel(rng, truth), True)


def random_voxel(rng: np.random.Generator, mask: np.ndarray) -> tuple[int, int, int]:
    """A uniformly drawn voxel of a non-empty mask."""
    flat = np.flatnonzero(mask)
    return tuple(int(v) for v in np.unravel_index(flat[rng.integers(flat.size)], mask.shape))


def others_previous(rng: np.random.Generator, classes: np.ndarray, target: int) -> np.ndarray:
    """The other classes' masks of an earlier round, as a fused segmentation holds them: the class
    map (1..K, `target` cleared) warped by a smooth random displacement of up to 3 voxels, with a
    class now and then missing (a class the fusion gave away)."""
    shape = classes.shape
    amplitude = rng.uniform(0.0, 3.0)
    cells = int(rng.integers(2, 6))
    grid = np.indices(shape, dtype=np.float32)
    for axis in range(3):
        grid[axis] += np.clip(amplitude * smooth_noise(rng, shape, cells), -3.0, 3.0)
    held = ndimage.map_coordinates(classes, grid, order=0, mode="nearest")
    missing = np.flatnonzero(rng.random(int(classes.max()) + 1) < 0.1)
    held[np.isin(held, [*missing, target])] = 0
    return held


def lost_to_others(rng: np.random.Generator, held: np.ndarray, truth: np.ndarray,
                   prev: np.ndarray | None, reach: int = 8) -> np.ndarray:
    """The others' voxels of the previous segmentation once the target's round took its share:
    where the target's previous mask missed its truth, the fusion gave those voxels to a
    neighbour (the nearest other class within `reach` voxels of them) three times in four, else
    to the background. The others' warped truths alone taught the network to trust them, and at
    inference they hold what the target must win back: leg V at step 521, ICBM CSF DSC_AUC 3.03
    without the others' channels, 2.80 with them."""
    if prev is None or not held.any() or rng.random() < 0.25:
        return held
    lost = truth & ~prev
    if not lost.any():
        return held
    coords = np.argwhere(lost)
    window = tuple(slice(max(a - reach, 0), b + reach + 1) for a, b in zip(coords.min(0), coords.max(0)))
    near = held[window]
    if not near.any():
        return held
    nearest = ndimage.distance_transform_edt(near == 0, return_distances=False, return_indices=True)
    out = held.copy()
    gained = lost[window]
    out[window][gained] = near[tuple(axis[gained] for axis in nearest)]
    return out


def target_weights(truths: list[np.ndarray]) -> np.ndarray:
    """How often each class is drawn as the target: CONTAINER_WEIGHT for one whose box contains
    two or more of the others' (app.views.contains_box), 1 otherwise. A white matter under its
    cortex parcels' boxes is one class in 20 of a parcelled brain, too rare to learn (issue 9)."""
    boxes = [bounding_box(m) for m in truths]
    held = [sum(contains_box(box, other) for o, other in enumerate(boxes) if o != c) for c, box in enumerate(boxes)]
    weights = np.where(np.array(held) >= 2, CONTAINER_WEIGHT, 1.0)
    return weights / weights.sum()


def clicked_error(prev: np.ndarray, truth: np.ndarray, click) -> np.ndarray:
    """The error the click marks: the 26-connected piece of the truth the previous mask missed
    (a voxel of the truth clicked) or of what it took beyond the truth (a voxel outside it) that
    holds the click; empty when the click is not on an error (or is None)."""
    if click is None or not all(0 <= c < n for c, n in zip(click, prev.shape)):
        return np.zeros(prev.shape, bool)
    error = truth & ~prev if truth[tuple(click)] else prev & ~truth
    if not error[tuple(click)]:
        return np.zeros(prev.shape, bool)
    pieces = cc3d.connected_components(error.astype(np.uint8), connectivity=26)
    return pieces == pieces[tuple(click)]
