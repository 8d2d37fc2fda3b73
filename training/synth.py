"""Procedural challenge-like 3D cases: the bulk of the training data.

One call of `generate(rng)` draws a scene (organs, lesions, CT trunks, heads, vessel trees or cells) on an
anisotropic grid and renders it with one of five modality looks (CT, MR, PET, US,
microscopy): bias field, gamma, blur, per-look noise, 0..255 uint8 like the challenge.
Everything is seeded by the caller's numpy Generator, so a seed fixes a case.
Shapes are kept below ~1.2M voxels so that generation stays a small part of a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import edt
import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

GENERATOR_VERSION = 11  # v11: scenes per look from SCENE_P; MR brains 25 -> 45 %, cortex parcels 20 -> 30 % of them
# v10: a quarter of the brain scenes labelled like aseg (nuclei, cortex, white matter, CSF)
# v9: brain sulci at least 1.5 voxels wide, the grey ribbon at least 1.5 voxels deep
# v8: brain scenes (folded grey ribbon over white matter, CSF sulci, atlas-like parcels)
# v7: half the scenes on a finer grid (up to 2x the voxels per mm in-plane, 256 voxels)
# v6: trunk CT scenes (a body filling the scan, lungs, ribs and spine, gas, abdominal organs)
# v5: 35 % of box scenes cut by the field of view (objects running out of the scan)
# v4: crescent organs (concave, the box centre outside them), the body around the organs as a class
# v3: head scenes, shells, more one-intensity parcels, shared neighbour means, border lines
# v2: tissue scenes (interleaved intensity-defined classes, cortex-like ribbons)
LOOKS = ("ct", "mr", "pet", "us", "microscopy")


@dataclass
class SynthCase:
    image: np.ndarray    # uint8 (D, H, W)
    labels: np.ndarray   # uint8 (D, H, W), 0 background, 1..K contiguous
    spacing: np.ndarray  # (z, y, x) mm
    look: str
    no_box: bool         # vessel/cell scenes are the challenge's box-less cases


def smooth_noise(rng: np.random.Generator, shape, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled trilinearly."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells, cells)).astype(np.float32))
    return F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()


def grid_mm(shape, spacing):
    return [np.arange(n, dtype=np.float32)[s] * sp for n, s, sp in zip(shape, _AXES, spacing)]


_AXES = ((slice(None), None, None), (None, slice(None), None), (None, None, slice(None)))


def blob(rng, shape, spacing, centre_mm, radii_mm, wobble: float) -> np.ndarray:
    """A smoothly deformed, randomly rotated ellipsoid (boolean mask).

    Evaluated only on its bounding sub-grid: q + wobble * noise < 1 needs q < 1 + wobble.
    """
    reach = max(radii_mm) * np.sqrt(1.0 + wobble)
    lo = np.clip(np.floor((np.asarray(centre_mm) - reach) / spacing), 0, shape).astype(int)
    hi = np.clip(np.ceil((np.asarray(centre_mm) + reach) / spacing) + 1, 0, shape).astype(int)
    out = np.zeros(shape, bool)
    if np.any(hi - lo < 1):
        return out
    sub = tuple(hi - lo)
    coords = [c + o * sp for c, o, sp in zip(grid_mm(sub, spacing), lo, spacing)]
    rot, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    d = [c - m for c, m in zip(coords, centre_mm)]
    q = 0.0
    for axis in range(3):
        u = d[0] * rot[axis, 0] + d[1] * rot[axis, 1] + d[2] * rot[axis, 2]
        q = q + (u / radii_mm[axis]) ** 2
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = (q + wobble * smooth_noise(rng, sub, int(rng.integers(3, 7)))) < 1.0
    return out


def random_grid(rng: np.random.Generator, thick_slices: bool):
    """A scan's (D, H, W) and spacing (mm). Half of the scenes get a finer grid over the same
    millimetres (up to 2x the voxels per axis, 256 in-plane): the challenge sends CT at native
    512^2 and MR brains at about 1 mm, where a large object is zoomed ~4x into the global patch,
    and with at most 128 voxels in-plane the network never saw that (the ICBM lobar parcels at
    1 mm: DSC it0 0.821, at 2 mm 0.846)."""
    in_plane = rng.uniform(0.6, 2.0)
    ratio = rng.uniform(2.0, 6.0) if thick_slices else rng.uniform(1.0, 1.5)
    finer = rng.uniform(1.0, 2.0) if rng.random() < 0.5 else 1.0
    hw = int(rng.integers(64, 129) * finer)
    in_plane /= finer
    w = int(np.clip(hw * rng.uniform(0.75, 1.25), 48, 256))
    d = int(np.clip(hw * rng.uniform(0.4, 1.0) / ratio * 2.0, 24, 160))
    return (d, hw, w), np.array([in_plane * ratio, in_plane, in_plane])


def organ_scene(rng, shape, spacing):
    """A body with 1..12 organs, some split into touching parcels, and lesions inside organs."""
    extent = np.asarray(shape) * spacing
    body = blob(rng, shape, spacing, extent / 2, extent * rng.uniform(0.42, 0.6, 3), 0.15)
    labels = np.zeros(shape, np.uint8)
    n_organs = int(rng.integers(1, 9))
    for _ in range(n_organs):
        radii = extent.min() * rng.uniform(0.05, 0.3, 3)
        radii[0] = max(radii[0], 1.5 * spacing[0])
        centre = extent * rng.uniform(0.25, 0.75, 3)
        mask = blob(rng, shape, spacing, centre, radii, rng.uniform(0.0, 0.6)) & body
        if rng.random() < 0.25:  # a crescent: a neighbour (heart, liver) pushes into it, like a lung
            bite_centre = centre + radii * rng.uniform(-0.8, 0.8, 3)
            bite = blob(rng, shape, spacing, bite_centre, radii * rng.uniform(0.5, 0.9, 3), 0.2)
            mask &= ~bite
        roll = rng.random()
        if roll < 0.45 and mask.sum() > 500:
            _split_into_parcels(rng, labels, mask, int(rng.integers(2, 9)))
        elif roll < 0.65 and mask.sum() > 500:
            labels[shell(mask, spacing, rng.uniform(1.0, 3.0) * spacing[1:].mean())] = labels.max() + 1
        else:
            labels[mask] = labels.max() + 1
    for _ in range(int(rng.integers(0, 3))):
        host = np.argwhere(labels > 0)
        if len(host) == 0:
            break
        centre = host[rng.integers(len(host))] * spacing
        radii = np.maximum(extent.min() * rng.uniform(0.015, 0.07, 3), spacing * 0.8)
        labels[blob(rng, shape, spacing, centre, radii, 0.3)] = labels.max() + 1
    if rng.random() < 0.3:  # the body around the organs is a class too: large, fills its box, has holes
        labels[body & (labels == 0)] = labels.max() + 1
    return _relabel(labels), body


def shell(mask: np.ndarray, spacing, thickness_mm: float) -> np.ndarray:
    """The outer layer of a mask (bone shells, walls): thin, hollow, filling its box."""
    depth = edt.edt(mask.astype(np.uint8), anisotropy=tuple(float(s) for s in spacing), parallel=1)
    return mask & (depth <= max(thickness_mm, float(min(spacing))))


def head_layers(rng, shape, spacing):
    """A head's nested masks: the head, its inside, the skull shell (2-7 mm) lining the inside,
    and the brain within the skull."""
    extent = np.asarray(shape) * spacing
    centre = extent / 2 + rng.normal(0, 0.03, 3) * extent
    radii = extent * rng.uniform(0.38, 0.48, 3)
    head = blob(rng, shape, spacing, centre, radii, 0.1)
    inner = blob(rng, shape, spacing, centre, radii * rng.uniform(0.75, 0.9), 0.1) & head
    skull = shell(inner, spacing, rng.uniform(2.0, 7.0))
    return head, inner, skull, inner & ~skull


def head_scene(rng, shape, spacing):
    """Soft tissue around a skull shell around a brain, often parcellated into touching
    regions of one intensity: the head CT and brain parcellation tasks."""
    head, inner, skull, brain = head_layers(rng, shape, spacing)
    labels = np.zeros(shape, np.uint8)
    labels[head & ~inner] = 1
    labels[skull] = 2
    if rng.random() < 0.7 and brain.sum() > 500:
        _split_into_parcels(rng, labels, brain, int(rng.integers(3, 15)))
    else:
        labels[brain] = 3
    return _relabel(labels), head


# brain-scene tissues, rendered with per-look means (brain_means); 0 is outside
SCALP, SKULL, CSF, GREY, WHITE = range(1, 6)


BRAIN_LABELLINGS = ("lobes", "cortex", "tissues", "whole", "aseg")
BRAIN_LABELLING_P = (0.35, 0.3, 0.1, 0.05, 0.2)
# the aseg labelling's deep nuclei (thalamus, caudate, putamen, pallidum): offset from the
# volume's centre and radii, mm (z, y, x; x mirrored per side) in a volume of ASEG_EXTENT mm, scaled
# per axis to other volumes (heads fill theirs alike); the last is a pallidum-like nucleus at white matter's level
NUCLEI_MM = (((0, 0, 14), (10, 8, 5)), ((0, 12, 18), (12, 6, 5)), ((-12, 4, 22), (8, 10, 5)),
             ((6, -10, 16), (8, 6, 6)))
ASEG_EXTENT = np.array([96 * 1.5, 128 * 1.3, 112 * 1.3])  # mm: harness.brains' volume (its head fills about 0.8 of it)


def brain_scene(rng, shape, spacing, labelling: str | None = None, clefts: bool | None = None):
    """A brain of grey and white matter under a skull, parcellated the way atlases are: lobes
    that hold a folded grey ribbon over white matter with dark CSF in the sulci, cortex parcels
    with the white matter as one class, the three tissues, the whole brain, or by tissue and
    place like FreeSurfer's aseg (aseg_labels); in 30 % skull-stripped. `labelling`
    (BRAIN_LABELLINGS) is drawn by BRAIN_LABELLING_P unless given;
    `clefts` (sulci where parcels meet, _clefts_between) in half the parcellations unless given.
    Why: the independent set's MR brains are parcellated into 10-20 regions, and the head
    scene's parcels were one flat intensity, where real regions hold several tissues. Returns
    the labels and the tissue map (render it with brain_means)."""
    head, _, skull, brain = head_layers(rng, shape, spacing)
    depth = edt.edt(brain.astype(np.uint8), anisotropy=tuple(float(s) for s in spacing), parallel=1)
    tissue = np.zeros(shape, np.uint8)
    tissue[head], tissue[skull] = SCALP, SKULL
    tissue[brain] = brain_tissue(rng, brain, depth, spacing)[brain]
    if rng.random() < 0.3:
        tissue[~brain] = 0
    parenchyma = brain & (tissue >= GREY)
    labels = np.zeros(shape, np.uint8)
    if labelling is None:
        labelling = BRAIN_LABELLINGS[int(rng.choice(len(BRAIN_LABELLINGS), p=BRAIN_LABELLING_P))]
    if labelling in ("lobes", "cortex"):
        if labelling == "cortex":  # cortex parcels over one white-matter class
            labels[tissue == WHITE] = 1
        first = int(labels.max()) + 1
        _split_into_parcels(rng, labels, parenchyma if labelling == "lobes" else brain & (tissue == GREY),
                            int(rng.integers(3, 16)))
        if rng.random() < 0.5 if clefts is None else clefts:
            _clefts_between(rng, labels, first, tissue, depth)
    elif labelling == "tissues":
        for t in (CSF, GREY, WHITE):
            labels[brain & (tissue == t)] = t
    elif labelling == "aseg":
        return aseg_labels(rng, tissue, spacing)
    else:
        labels[brain] = 1
    return _relabel(labels), tissue


def aseg_labels(rng, tissue: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Labels the way FreeSurfer's aseg does, 13 classes: 8 deep nuclei (grey matter's level, one
    per side at white matter's), then the cortex left and right, the white matter left and
    right, and the CSF within the brain; returns the labels and the tissue with the nuclei.

    Why: an MR brain parcellated into 10 to 20 regions may be cut by tissue as well as by place.
    Then a hemisphere's cortex and white matter share about one box (twins), its white matter's
    box holds the nuclei's (a container), and the CSF's box holds them all: rules the lobe and
    cortex parcels never meet. A class a truncated or small head leaves empty is dropped."""
    shape = tissue.shape
    brain_mask = tissue >= CSF
    extent = np.asarray(shape) * spacing
    centre, scale = extent / 2, extent / ASEG_EXTENT
    labels, tissue = np.zeros(shape, np.uint8), tissue.copy()
    for side in (-1, 1):
        for j, (offset, radii) in enumerate(NUCLEI_MM):
            at = centre + np.array(offset) * scale * np.array([1, 1, side]) + rng.normal(0, 1.5, 3)
            nucleus = blob(rng, shape, spacing, at, np.array(radii, float) * scale * rng.uniform(0.8, 1.2), 0.3)
            nucleus &= (labels == 0) & brain_mask
            labels[nucleus] = labels.max() + 1
            tissue[nucleus] = WHITE if j == len(NUCLEI_MM) - 1 else GREY
    free = (labels == 0) & brain_mask
    left = np.zeros(shape, bool)
    left[:, :, shape[2] // 2:] = True
    parts = [(tissue == t) & half for t in (GREY, WHITE) for half in (left, ~left)]
    for part in (*parts, tissue == CSF):
        labels[free & part] = labels.max() + 1
    return _relabel(labels), tissue


def _clefts_between(rng, labels, first, tissue, depth) -> None:
    """Deep sulci where two parcels (labels >= first) meet, 10-30 mm in from the brain's surface
    (`depth`, mm): CSF, unlabelled. Atlas regions end at sulci (lobes at the central and lateral sulci, gyral
    parcels at their fundi), so their borders are often visible near the surface, while deep in
    the white matter they stay invisible."""
    parcels = np.where(labels >= first, labels, 0).astype(np.uint8)
    higher = ndimage.maximum_filter(parcels, 3) > parcels
    lower = ndimage.minimum_filter(np.where(parcels > 0, parcels, 255).astype(np.uint8), 3) < parcels
    cleft = (parcels > 0) & (higher | lower) & (depth < rng.uniform(10, 30))
    tissue[cleft], labels[cleft] = CSF, 0


def brain_tissue(rng, brain, depth, spacing) -> np.ndarray:
    """CSF, grey and white matter in a brain mask (`depth`: mm from its surface): sulci are
    sheets where a smooth field crosses zero (every 8-14 mm, 1-2 mm wide), cut 8-20 mm deep
    from the surface; the grey ribbon (2-4 mm) follows the surface and the sulci; ventricles of
    CSF and deep grey nuclei sit in the white matter. Sulci at least 1.5 voxels wide and the
    ribbon at least 1.5 voxels deep: thinner ones blur into partial volume (grey/white d' 2.85,
    CSF/grey 1.4 at 2.1 mm, against 3.2 and 3.5 on the ICBM template; 3.0 and 1.8 with the floors)."""
    aniso = tuple(float(s) for s in spacing)
    shape, extent = brain.shape, np.asarray(brain.shape) * spacing
    folds = smooth_noise(rng, shape, int(np.clip(extent.max() / rng.uniform(8, 14), 6, 32)))
    slope = np.sqrt(sum(g ** 2 for g in np.gradient(folds, *spacing))) + 1e-6
    half_width = max(rng.uniform(0.4, 1.0), 0.75 * float(spacing[1:].min()))
    sulci = brain & (np.abs(folds) / slope < half_width) & (depth < rng.uniform(8, 20))
    sulci |= brain & (depth <= rng.uniform(0.0, 1.5))
    tissue = np.where(brain, WHITE, 0).astype(np.uint8)
    cortex_depth = edt.edt((brain & ~sulci).astype(np.uint8), anisotropy=aniso, parallel=1)
    tissue[brain & (cortex_depth <= max(rng.uniform(2.0, 4.0), 1.5 * float(spacing[1:].min())))] = GREY
    core = np.argwhere(depth > 0.5 * depth.max())
    for kind in [CSF] * int(rng.integers(1, 3)) + [GREY] * int(rng.integers(0, 3)):
        if len(core) == 0:
            break
        radii = np.maximum(extent * rng.uniform(0.03, 0.08, 3), spacing)
        tissue[blob(rng, shape, spacing, core[rng.integers(len(core))] * spacing, radii, 0.3) & brain] = kind
    tissue[sulci] = CSF
    return tissue


def brain_means(rng, look: str) -> np.ndarray:
    """Means per brain tissue: T1 (CSF < grey < white), T2 (the reverse) or CT (grey and white
    a few units apart, the skull bright)."""
    means = np.zeros(WHITE + 1)
    if look == "ct":
        means[SCALP], means[SKULL] = rng.uniform(0.4, 0.55), rng.uniform(0.9, 1.0)
        means[GREY] = rng.uniform(0.4, 0.55)
        means[WHITE] = means[GREY] - rng.uniform(0.02, 0.08)
        means[CSF] = means[GREY] - rng.uniform(0.1, 0.25)
        return means
    csf, grey, white = np.sort(rng.uniform(0.05, 0.95, 3))
    if grey - csf < 0.1 or white - grey < 0.08:
        csf, grey, white = rng.uniform(0.05, 0.25), rng.uniform(0.35, 0.55), rng.uniform(0.6, 0.85)
    if rng.random() < 0.35:  # T2-like
        csf, white = 1.0 - csf, 1.0 - white
    means[CSF], means[GREY], means[WHITE] = csf, grey, white
    means[SCALP], means[SKULL] = rng.uniform(0.3, 0.9), rng.uniform(0.0, 0.2)
    means[0] = rng.uniform(0.0, 0.05)
    return means


def ellipsoid(rng, shape, spacing, centre_mm, radii_mm, wobble: float) -> np.ndarray:
    """An axis-aligned ellipsoid with a smoothly wobbling surface (lungs, the body: upright)."""
    g = grid_mm(shape, spacing)
    q = sum(((c - m) / r) ** 2 for c, m, r in zip(g, centre_mm, radii_mm))
    return q + wobble * smooth_noise(rng, shape, int(rng.integers(3, 7))) < 1.0


# trunk tissues, rendered with fixed CT means (TRUNK_WINDOWS); organs follow as ORGAN + i
OUTSIDE, FAT, SOFT, LUNG, BONE, GAS, VESSEL, ORGAN = range(8)
TRUNK_WINDOWS = {  # tissue mean ranges in [0, 1] (outside air is 0 in both)
    "lung": {FAT: (0.72, 0.84), SOFT: (0.85, 0.95), LUNG: (0.18, 0.35), BONE: (1.0, 1.0), GAS: (0.0, 0.08),
             VESSEL: (0.75, 0.9)},
    "soft": {FAT: (0.08, 0.3), SOFT: (0.45, 0.65), LUNG: (0.0, 0.03), BONE: (0.95, 1.0), GAS: (0.0, 0.03),
             VESSEL: (0.5, 0.8)},
}


def trunk_scene(rng, shape, spacing):
    """A CT chest or abdomen: the body fills the scan and runs out of it at both z ends, two
    dark lungs at some height (whole, bases, or none), ribs and spine, gas pockets and organs.
    Classes: the soft-tissue body (holes where lungs, bone, gas are), each lung (or both as one), the bone, and
    some organs. Why: the real large CT structures the network degraded from its box prior
    (valset body and lungs 0.36-0.64 against 0.74-0.94) have no synthetic counterpart in the
    other scenes. Returns the labels and the tissue map (render it with TRUNK_WINDOWS)."""
    extent = np.asarray(shape) * spacing
    z, y, x = grid_mm(shape, spacing)
    cy, cx = extent[1] * rng.uniform(0.45, 0.55), extent[2] * rng.uniform(0.45, 0.55)
    ry, rx = extent[1] * rng.uniform(0.3, 0.45), extent[2] * rng.uniform(0.38, 0.49)
    wobble = 1 + 0.06 * smooth_noise(rng, shape, 4)
    body = (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) * wobble < 1.0
    depth = edt.edt(body.astype(np.uint8), anisotropy=tuple(float(s) for s in spacing), parallel=1)
    fat_mm, rib_mm = rng.uniform(3, 15), rng.uniform(2, 5)
    tissue = np.where(body, SOFT, OUTSIDE).astype(np.uint8)
    tissue[body & (depth < fat_mm)] = FAT
    inner = depth > fat_mm + rib_mm + 2
    lungs = []
    lung_z = extent[0] * rng.uniform(-0.4, 0.6)  # the lungs' centre height: above the scan to mid-scan
    if lung_z + extent[0] * 0.6 > 0 and rng.random() < 0.85:
        for side in (-1, 1):
            centre = (lung_z, cy - 0.1 * ry, cx + side * rx * rng.uniform(0.4, 0.5))
            radii = (extent[0] * rng.uniform(0.4, 0.7), ry * rng.uniform(0.55, 0.8), rx * rng.uniform(0.3, 0.42))
            lung = ellipsoid(rng, shape, spacing, centre, radii, 0.15) & inner
            if side < 0 and rng.random() < 0.5:  # the heart pushes into one lung
                heart = (lung_z, cy, cx - 0.15 * rx), (radii[0], 0.4 * ry, 0.3 * rx)
                lung &= ~ellipsoid(rng, shape, spacing, *heart, 0.1)
            tissue[lung] = LUNG
            lungs.append(lung)
        vessels = smooth_noise(rng, shape, int(rng.integers(12, 24))) > rng.uniform(0.55, 0.8)
        tissue[(lungs[0] | lungs[1]) & vessels] = VESSEL
    period = rng.uniform(15, 30)  # ribs: bands of a shell below the fat, one every `period` mm
    bands = np.sin(2 * np.pi * z / period + rng.uniform(0, 6)) > 0.2
    ribs = body & (depth >= fat_mm) & (depth < fat_mm + rib_mm) & bands
    ribs &= (y - cy) < ry * rng.uniform(0.0, 0.8)  # not all around: open towards the belly
    spine_r = min(ry, rx) * rng.uniform(0.12, 0.2)
    spine = ((y - (cy + 0.55 * ry)) ** 2 + (x - cx) ** 2 < spine_r**2) & body
    spine = shell(spine, spacing, rng.uniform(2, 4)) if rng.random() < 0.6 else spine
    bone = (ribs | spine) & ~np.isin(tissue, (LUNG, VESSEL))
    tissue[bone] = BONE
    organs = []
    for i in range(int(rng.integers(0, 4))):  # liver, spleen, kidneys: soft tissue a little apart
        centre = (extent[0] * rng.uniform(0.2, 0.9), cy + ry * rng.uniform(-0.4, 0.4), cx + rx * rng.uniform(-0.6, 0.6))
        radii = np.array([extent[0] * rng.uniform(0.1, 0.3), ry * rng.uniform(0.15, 0.45), rx * rng.uniform(0.1, 0.35)])
        organ = blob(rng, shape, spacing, centre, radii, 0.3) & inner & (tissue == SOFT)
        tissue[organ] = ORGAN + i
        organs.append(organ)
    for _ in range(int(rng.integers(0, 8))):  # bowel gas and the trachea: dark, unlabelled holes
        centre = (extent[0] * rng.uniform(0, 1), cy + ry * rng.uniform(-0.6, 0.4), cx + rx * rng.uniform(-0.6, 0.6))
        radii = extent.min() * rng.uniform(0.02, 0.08, 3)
        gas = blob(rng, shape, spacing, centre, radii, 0.4) & inner & (tissue == SOFT)
        tissue[gas] = GAS
    labels = np.zeros(shape, np.uint8)
    named = [o for o in organs if rng.random() < 0.6]
    if rng.random() < 0.8:  # the body class: soft tissue and the organs not named on their own
        labels[np.isin(tissue, (FAT, SOFT)) | ((tissue >= ORGAN) & ~np.any([np.zeros(shape, bool), *named], 0))] = 1
    if lungs and rng.random() < 0.3:  # both lungs one class: two dark crescents around a bright heart
        lungs = [lungs[0] | lungs[1]]
    for part in [*lungs, bone if rng.random() < 0.7 else None, *named]:
        if part is not None:
            labels[part] = labels.max() + 1
    return _relabel(labels), tissue


def _split_into_parcels(rng, labels, mask, parts):
    """Voronoi parcels of one blob: touching neighbours that often share one intensity."""
    points = np.argwhere(mask)
    seeds = points[rng.choice(len(points), min(parts, len(points)), replace=False)].astype(np.float32)
    nearest = np.zeros(len(points), np.int64)
    best = np.full(len(points), np.inf, np.float32)
    for i, seed in enumerate(seeds):  # seed by seed: no (points x seeds) matrix on large masks
        d2 = ((points - seed) ** 2).sum(-1)
        closer = d2 < best
        best[closer], nearest[closer] = d2[closer], i
    labels[tuple(points.T)] = labels.max() + 1 + nearest


def vessel_scene(rng, shape, spacing):
    """1..3 branching tube trees (thin, long): the challenge's box-less tubular targets."""
    labels = np.zeros(shape, np.uint8)
    extent = np.asarray(shape) * spacing
    for label in range(1, int(rng.integers(1, 4)) + 1):
        centre = np.zeros(shape, bool)
        radius = rng.uniform(1.0, 3.0) * spacing[1:].mean()
        stack = [(extent * rng.uniform(0.2, 0.8, 3), _unit(rng.normal(size=3)), 0)]
        while stack:
            pos, direction, depth = stack.pop()
            for _ in range(int(rng.integers(15, 50))):
                direction = _unit(direction + rng.normal(0, 0.25, 3))
                pos = pos + direction * spacing.min() * 0.8
                idx = np.round(pos / spacing).astype(int)
                if np.any(idx < 0) or np.any(idx >= shape):
                    break
                centre[tuple(idx)] = True
                if depth < 3 and rng.random() < 0.04:
                    stack.append((pos.copy(), _unit(direction + rng.normal(0, 0.8, 3)), depth + 1))
        if centre.any():
            dist = edt.edt(~centre, anisotropy=tuple(float(s) for s in spacing), parallel=1)
            labels[(dist <= radius) & (labels == 0)] = label
    return _relabel(labels), np.ones(shape, bool)


def cell_scene(rng, shape, spacing):
    """Sparse cells or nuclei (microscopy): many small instances, each its own class."""
    labels = np.zeros(shape, np.uint8)
    extent = np.asarray(shape) * spacing
    for _ in range(int(rng.integers(3, 21))):
        radii = np.maximum(extent.min() * rng.uniform(0.04, 0.12) * rng.uniform(0.7, 1.3, 3), spacing * 1.5)
        mask = blob(rng, shape, spacing, extent * rng.uniform(0.1, 0.9, 3), radii, 0.25) & (labels == 0)
        labels[mask] = labels.max() + 1
    return _relabel(labels), np.ones(shape, bool)


def tissue_scene(rng, shape, spacing):
    """Interleaved classes defined by the levels of a smooth field inside a body, sometimes with
    a folded ribbon at its surface (brain tissue, parcellations): the box says little here,
    the intensity says much, as in real multi-class MR."""
    extent = np.asarray(shape) * spacing
    body = blob(rng, shape, spacing, extent / 2, extent * rng.uniform(0.35, 0.5, 3), 0.2)
    coarse = smooth_noise(rng, shape, int(rng.integers(4, 12)))
    field = coarse + 0.5 * smooth_noise(rng, shape, int(rng.integers(12, 24)))
    k = int(rng.integers(2, 6))
    levels = np.quantile(field[body], np.linspace(0, 1, k + 1)[1:-1]) if body.any() else []
    labels = (np.digitize(field, levels) + 1).astype(np.uint8)
    labels[~body] = 0
    if rng.random() < 0.5:
        depth = edt.edt(body.astype(np.uint8), anisotropy=tuple(float(s) for s in spacing), parallel=1)
        thickness = rng.uniform(1.5, 4.0) * spacing[1:].mean() * (1 + 0.6 * smooth_noise(rng, shape, 10))
        labels[body & (depth < thickness)] = k + 1
    return _relabel(labels), body


def _unit(v):
    v = np.asarray(v, float)
    return v / (np.linalg.norm(v) + 1e-8)


def _relabel(labels):
    """Drops labels too small to click on and makes the rest contiguous 1..K."""
    counts = np.bincount(labels.ravel(), minlength=256)
    keep = [v for v in range(1, 256) if counts[v] >= 20]
    lut = np.zeros(256, np.uint8)
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels]


def trunk_means(rng, tissue: np.ndarray) -> np.ndarray:
    """CT means per trunk tissue in a lung or a soft-tissue window; organs near soft tissue."""
    window = TRUNK_WINDOWS["lung" if rng.random() < 0.5 else "soft"]
    means = np.zeros(max(int(tissue.max()), VESSEL) + 1)
    for t, (lo, hi) in window.items():
        means[t] = rng.uniform(lo, hi)
    means[ORGAN:] = means[SOFT] + rng.uniform(-0.12, 0.12, means.size - ORGAN)
    return means


def render(rng, labels, body, spacing, look: str, may_share: bool = True, means=None) -> np.ndarray:
    """Intensities for a label map: per-class means (sometimes shared, or given), texture, look-specific physics."""
    shape = labels.shape
    k = int(labels.max())
    given = means is not None
    if not given:
        shared = may_share and rng.random() < 0.45
        means = np.full(k + 1, rng.uniform(0.2, 0.8)) if shared else rng.uniform(0.1, 0.95, k + 1)
        if shared:
            means[1:] += rng.normal(0, 0.03, k)
        elif k > 1:  # some classes take a neighbour's intensity: only the prompts tell them apart
            for c in np.flatnonzero(rng.random(k) < 0.3) + 1:
                means[c] = means[int(rng.integers(1, k + 1))] + rng.normal(0, 0.02)
        means[0] = rng.uniform(0.05, 0.6)
    if look == "microscopy":
        means[0], means[1:] = rng.uniform(0.0, 0.15), rng.uniform(0.4, 1.0, k)
    if look == "pet":
        means[0], means[1:] = rng.uniform(0.02, 0.2), rng.uniform(0.5, 1.0, k)
    img = means[labels].astype(np.float32)
    img += 0.06 * smooth_noise(rng, shape, int(rng.integers(6, 16)))
    if rng.random() < 0.3:  # dark or bright lines where regions meet (sulci, fascia)
        border = np.zeros(shape, bool)
        for axis in range(3):
            step = np.diff(labels, axis=axis) != 0
            border |= np.concatenate([step, np.zeros_like(np.take(step, [0], axis=axis))], axis=axis)
        img[border] += rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.2)
    if look == "ct" and not given:
        img[~body] = 0.0
        for _ in range(int(rng.integers(0, 4))):  # bone or contrast: bright, unlabelled
            radii = np.asarray(shape) * spacing * rng.uniform(0.02, 0.1, 3)
            img[blob(rng, shape, spacing, np.asarray(shape) * spacing * rng.uniform(0.2, 0.8, 3), radii, 0.3)] = 1.0
    sigma = rng.uniform(0.3, 1.2, 3) / np.maximum(spacing / spacing.min(), 1)
    if look == "pet":
        sigma = sigma * rng.uniform(2.0, 4.0)
    img = ndimage.gaussian_filter(img, sigma)
    if look in ("mr", "us", "microscopy"):
        img *= 1.0 + rng.uniform(0.1, 0.4) * smooth_noise(rng, shape, 3)
    if look == "us":
        speckle = rng.rayleigh(0.8, shape).astype(np.float32)
        img = ndimage.gaussian_filter(img * speckle, (0.3, 0.8, 0.8))
    noise = rng.uniform(0.01, 0.08)
    if look == "mr":
        img = np.hypot(img + rng.normal(0, noise, shape), rng.normal(0, noise, shape))
    elif look in ("pet", "microscopy"):
        img = rng.poisson(np.clip(img, 0, None) * 60.0) / 60.0
    else:
        img = img + rng.normal(0, noise, shape)
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    return (img * 255.0 + 0.5).astype(np.uint8)


# each look's scenes and their probabilities, as in the challenge (cells in microscopy, trunks in
# CT). MR is mostly brains: the independent set's MR cases are seven parcellated brains, and
# generator v10's MR brains (a quarter of MR, 5 % of it cortex parcels) left the network's cortex
# parcels spilling into the white matter (harness/EXPERIMENTS.md, tenth session).
SCENE_P = {"ct": ((vessel_scene, 0.2), (trunk_scene, 0.3), (head_scene, 0.15), (brain_scene, 0.07),
                  (organ_scene, 0.28)),
           "mr": ((vessel_scene, 0.15), (tissue_scene, 0.15), (brain_scene, 0.45), (head_scene, 0.05),
                  (organ_scene, 0.2)),
           "pet": ((tissue_scene, 0.3), (organ_scene, 0.7)),
           "us": ((tissue_scene, 0.3), (organ_scene, 0.7)),
           "microscopy": ((cell_scene, 1.0),)}


def generate(rng: np.random.Generator, look: str | None = None) -> SynthCase:
    """One labelled case; the scene follows the look as in the challenge (cells in microscopy, ...)."""
    look = look or LOOKS[int(rng.integers(len(LOOKS)))]
    scenes, p = zip(*SCENE_P[look])
    scene = scenes[int(rng.choice(len(scenes), p=p))]
    shape, spacing = random_grid(rng, thick_slices=look in ("ct", "mr", "pet") and rng.random() < 0.5)
    labels, body = scene(rng, shape, spacing)
    if labels.max() == 0:
        return generate(rng, look)
    if scene is trunk_scene:
        tissue = body
        image = render(rng, tissue, tissue > OUTSIDE, spacing, look, means=trunk_means(rng, tissue))
    elif scene is brain_scene:
        image = render(rng, body, body > 0, spacing, look, means=brain_means(rng, look))
    else:
        image = render(rng, labels, body, spacing, look, may_share=scene is not tissue_scene)
    if scene is head_scene and look == "ct" and rng.random() < 0.7:  # bone is the brightest thing in CT
        image[labels == 2] = np.maximum(image[labels == 2], rng.integers(200, 256))
    case = SynthCase(image, labels, spacing, look, no_box=scene in (vessel_scene, cell_scene))
    return truncate(rng, case) if not case.no_box and rng.random() < 0.35 else case


def truncate(rng: np.random.Generator, case: SynthCase) -> SynthCase:
    """The scan ends inside an object: the volume is cut 10-50 % into a large label's extent, in z
    and sometimes in-plane. Real bodies, heads and livers run out of the field of view; with
    every synthetic object whole, the network learned to taper objects towards the box's ends
    (valset: the first and last slices of a head and an abdomen body left out entirely)."""
    sizes = np.bincount(case.labels.ravel())[1:]
    label = int(rng.choice(np.arange(1, sizes.size + 1), p=sizes / sizes.sum()))
    coords = np.argwhere(case.labels == label)
    lo, hi = coords.min(0), coords.max(0)
    window = [slice(None)] * 3
    for axis in [0] + [a for a in (1, 2) if rng.random() < 0.3]:
        cut = max(1, round(rng.uniform(0.1, 0.5) * (hi[axis] - lo[axis])))  # a thin object still runs out
        if rng.random() < 0.5:
            window[axis] = slice(lo[axis] + cut, None)
        else:
            window[axis] = slice(0, hi[axis] - cut + 1)
    labels = _relabel(case.labels[tuple(window)])  # before the check: it drops labels cut to a sliver
    if labels.max() == 0 or min(labels.shape) < 8:
        return case
    return SynthCase(np.ascontiguousarray(case.image[tuple(window)]), labels, case.spacing, case.look, False)


def parcellate(rng: np.random.Generator, case: SynthCase) -> SynthCase:
    """Labels by rule on a (real) image: its foreground (largest bright component, holes
    filled) split into 2..14 touching parcels of one intensity, or in 30 % kept whole (a head
    or body: a large organ that fills its box and runs out of the crop), the case's label 1
    (a data crop's chosen label) painted on top. The brain-parcellation task on real texture."""
    threshold = np.percentile(case.image, rng.uniform(40, 70))
    components, _ = ndimage.label(case.image > threshold)
    if components.max() == 0:
        return case
    largest = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
    labels = np.zeros(case.labels.shape, np.uint8)
    parts = 1 if rng.random() < 0.3 else int(rng.integers(2, 15))
    _split_into_parcels(rng, labels, ndimage.binary_fill_holes(largest), parts)
    labels[case.labels == 1] = labels.max() + 1
    return SynthCase(case.image, _relabel(labels), case.spacing, case.look, False)


MODALITY_PREFIX = {"ct": "CT", "mr": "MR", "pet": "PET", "us": "US", "microscopy": "Microscopy"}
VALIDATION_SEED = 2 * 10**9  # far from every stream training draws from


def write_labelled(case: SynthCase, path) -> None:
    """A case as a challenge training file: imgs, gts, spacing in the stored (x, y, z) order."""
    np.savez_compressed(path, imgs=case.image, gts=case.labels, spacing=case.spacing[::-1].copy())


def main(argv=None) -> None:
    """Write synthetic validation cases (one look after another) for the harness."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports/synth_val"))
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.cases):
        look = LOOKS[i % len(LOOKS)]
        case = generate(np.random.default_rng(args.seed + i), look)
        path = args.out / f"{MODALITY_PREFIX[look]}_synth{i:02d}.npz"
        write_labelled(case, path)
        print(f"{path} {case.image.shape} K={case.labels.max()} no_box={case.no_box}")


if __name__ == "__main__":
    main()
