"""`python -m harness.valset --out reports/valset`: a validation set shaped like the challenge's task mix.

Why: a set of only small lesions ranked a learned engine above the classical method while an
independent set of real cases (head CT, thick-slice chest CT with several structures, MR brains
parcellated into touching regions of one intensity, nuclei without boxes) ranked it below.
This set holds every kind of target the challenge scores, from real images wherever possible:

    organ     large structure filling much of its box (body, lungs, head, WM, synthetic organs)
    thin      thin, hollow or tubular (bone shells and ribs, lung-base crescents, the GM ribbon,
              CSF, vessel trees)
    parcel    touching regions that share one intensity (brain parcels)
    lesion    lesions (the real PyRadiomics labels, synthetic hot spots)
    instance  many small instances, no boxes (nuclei)

Real images get labels by RULES written below; only the lesion labels and the ICBM tissue labels
are real annotations. None of these images is used in training: the engine trains on
MR_PyRadiomics_brain1 and MR_PyRadiomics_breast1 (training/bundled_split.txt), which are not used here.
Give reports/valset to training only as validation data (train.py --val-data): training.data
counts the cases of a folder without a split rule as training cases.

Output: one training-style npz per case (`imgs` uint8 (z, y, x), `gts` uint8 contiguous 1..K,
`spacing` in the stored (x, y, z) order of the source, scaled only where a case resamples) and
`tasks.json`: per case `box` (false: the harness runs it without boxes), source, licence, shape,
spacing, and per class its label, name, task type, voxel count and box fill (voxels / volume of
the class's 3D bounding box). Deterministic: same sources, same files. `harness.eval --data
reports/valset` reads tasks.json for the box mode and the task types of the report.

Sources (`../shared/samples`, with `tests/data/labelled` for the two MR files it also holds);
a missing source skips its cases with a message. AMOS is non-commercial: it is read at build
time only and what is derived from it goes to the output folder (reports/, git-ignored), never
into the repository.

Common rules
  * `finish`: layers are painted in order (later ones win); for rule-derived layers every
    26-connected component under MIN_VOXELS (50) voxels is dropped (too small to click), a class
    left under MIN_VOXELS is dropped, and the rest are renumbered 1..K in layer order. Real
    annotations (lesions, ICBM tissue) are kept as they are.
  * In-plane downsampling (CT, factor 2): 2x2 block mean of the image (rounded), spacing x and y
    doubled; a real label is kept where at least half of its block is labelled. Slice pairing
    (10 mm case): mean of slices 2k and 2k+1, spacing z doubled, lesion = either slice.
  * Crop: to the bounding box of the body (head) mask plus CROP_MARGIN voxels in-plane, every
    slice kept, so volumes stay at a few million voxels for a 2-core evaluation.
  * `body_mask(img, level)`: the largest 6-connected component of img > level, every axial slice
    hole-filled (so lungs, airways and gas inside count as body).

CT, lung window (PyRadiomics lung1/lung2: L-600/W1500 -> 0..255, intensity = (HU + 1350) * 255 / 1500;
air ~60, lung ~85, fat ~212, soft tissue ~235, 255 = at least 150 HU):
  * body: body_mask(img, 145) (-500 HU).
  * air: img <= 145 inside the body.
  * lungs: the air split in two by `split_pair`: the air is eroded in-plane (cross, up to
    SPLIT_MAX_ERODE voxels) until its two largest 6-components both hold >= 25 % of the larger
    (this cuts the trachea and main bronchi that join the lungs); each piece then regrows into
    the air voxels within (erosions + 1) voxels of it, by nearest piece (what stays unreached,
    the trachea and bronchi, is not labelled), and each lung is hole-filled per slice (vessels
    inside the lung belong to it). The lung at low x is named right (LPS array order).
  * bone: img >= 250 (saturated, >= ~140 HU after block means) inside the body, not in a lung:
    ribs, spine, sternum, scapulae; also contrast-filled vessels if any (a thin class).
  * body class = body minus air, lungs and bone (the soft-tissue body: chest wall, mediastinum).
  * lesion: the real PyRadiomics label (painted last).
  Cases: lung1 at 2x in-plane downsampling (5 mm slices); lung2 at native in-plane resolution
  with 10 mm slices (slice pairs), like the independent set's thick-slice chest CT.

CT, soft-tissue window (AMOS amos_0018: L40/W400 -> 0..255, intensity = (HU + 160) * 255 / 400, air 0):
  * body: body_mask(img, 20) (-129 HU; outside air is 0, fat ~38); the table is a separate component.
  * bone: img >= 250 (>= 232 HU) inside the body: vertebrae, pelvis, ribs (shells: a thin class).
  * lung bases: air (img <= 5) inside the body, 6-components touching the top slice (the scan
    ends in the chest), hole-filled per slice: crescents over the liver and spleen domes (thin).
    Saturated contrast in the renal collecting systems can join the bone class where it
    forms a component of >= 50 voxels (a few spots).
  * bowel gas is left unlabelled (background); body class = body minus air, lungs, bone.
  2x in-plane downsampling, 5 mm slices kept.

MR, ICBM152 2009a template (2 mm, labels GM 1, WM 2, CSF 3, real tissue maps):
  * MR_valset_icbm_tissue: the labels as they are (GM thin ribbon, WM organ, CSF thin).
  * MR_valset_icbm_parcels: the brain (GM or WM) split into PARCELS_PER_SIDE parcels per
    hemisphere: hemispheres by the brain's centroid x (the template is symmetric), then k-means
    of voxel positions in mm (farthest-point initialisation from the voxel nearest the centroid,
    KMEANS_ITERATIONS Lloyd steps), every parcel reduced to its largest 26-component and the
    cut-off voxels regrown geodesically from the kept parcels (islands no parcel reaches are
    dropped). Every parcel holds the same GM/WM mix, so the boundaries between touching parcels
    are invisible in the image. Compact cells: each parcel fills a fair part of its box.
  * MR_valset_icbm_cortex_parcels: the same on the GM ribbon alone (a cortical parcellation):
    thin, folded parcels of one intensity whose boxes overlap their neighbours'.

MR, PyRadiomics brain2 (T1 with contrast, head with scalp and skull):
  * head: body_mask(img, 15) after a 3x3 in-plane median (background <= ~8), organ;
  * lesion: the real label (painted last).

Procedural (training/synth.py blob/render/smooth_noise functions, seeds SEED + i with SEED =
synth.VALIDATION_SEED + 100, far from every training stream and from the 10 cases of
`python -m training.synth`; they change if the generator does: tasks.json records its version):
  * Microscopy_valset_nuclei: NUCLEI nuclei (touching allowed), microscopy look, no boxes.
  * CT_valset_vessels: 3 branching vessel trees (`vessel_trees`, thin), contrast-bright in soft
    tissue with two unlabelled bright blobs, no boxes (declared in tasks.json, not by name).
  * PET_valset_organs: a body, 3 organs (organ; a later organ loses its overlap with an earlier
    one) and 2 lesions inside organs (lesion), synth.render PET look.
  * US_valset_organ: one large organ and a lesion inside it, synth.render US look.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage

from app.io import pack_text_prompts

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "samples"
SEARCH = [REPO / "tests" / "data" / "labelled", SHARED / "labelled", SHARED / "inputs"]
TASK_TYPES = ("organ", "thin", "parcel", "lesion", "instance")
MIN_VOXELS = 50
CROP_MARGIN = 3
SPLIT_MAX_ERODE = 15
PARCELS_PER_SIDE = 7
KMEANS_ITERATIONS = 30
NUCLEI = 50
LICENCES = {
    "pyradiomics": "BSD-3 (PyRadiomics 3.0.1, ../shared/samples/licenses)",
    "icbm": "MNI/McGill ICBM152 notice + nilearn BSD-3 (../shared/samples/licenses)",
    "amos": "AMOS 2022, non-commercial (CC BY-NC family): local evaluation only, never commit or publish",
    "synthetic": "procedural (training/synth.py)",
}


@dataclass
class Layer:
    name: str
    task: str
    mask: np.ndarray
    real: bool = False  # a real annotation: kept as it is (no small-component removal)
    text: str = ""  # the class's text prompt, as the organisers write one (iteration 0)


@dataclass
class ValCase:
    name: str
    imgs: np.ndarray  # uint8 (z, y, x)
    gts: np.ndarray  # uint8, contiguous 1..K
    spacing: np.ndarray  # stored (x, y, z)
    classes: list[dict]
    box: bool
    source: str
    licence: str
    notes: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --- generic rules ----------------------------------------------------------------------------------


def find_source(name: str) -> Path | None:
    for folder in SEARCH:
        path = folder / f"{name}.npz"
        if path.exists():
            return path
    return None


def drop_small(mask: np.ndarray, min_voxels: int = MIN_VOXELS) -> np.ndarray:
    """The mask without its 26-connected components under min_voxels."""
    if not mask.any():
        return mask
    components = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    counts = np.bincount(components.ravel())
    keep = counts >= min_voxels
    keep[0] = False
    return keep[components]


def largest_component(mask: np.ndarray, connectivity: int = 6) -> np.ndarray:
    components, n = cc3d.connected_components(mask.astype(np.uint8), connectivity=connectivity, return_N=True)
    if n == 0:
        return np.zeros(mask.shape, bool)
    counts = np.bincount(components.ravel())
    counts[0] = 0
    return components == int(np.argmax(counts))


def fill_slices(mask: np.ndarray) -> np.ndarray:
    """Hole filling in every axial slice."""
    return np.stack([ndimage.binary_fill_holes(s) for s in mask]) if mask.size else mask


def body_mask(img: np.ndarray, level: float) -> np.ndarray:
    return fill_slices(largest_component(img > level, connectivity=6))


def block_mean(img: np.ndarray, factor: int) -> np.ndarray:
    """In-plane factor x factor block mean (trailing rows/columns that do not fill a block are cut)."""
    d, h, w = img.shape
    h, w = h // factor * factor, w // factor * factor
    blocks = img[:, :h, :w].astype(np.float32).reshape(d, h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(2, 4))


def downsample(img, mask, spacing_xyz, factor: int):
    """Block-mean image, half-covered mask, spacing x and y scaled."""
    image = np.round(block_mean(img, factor)).astype(np.uint8)
    label = block_mean(mask.astype(np.uint8), factor) >= 0.5
    spacing = np.array(spacing_xyz, float) * np.array([factor, factor, 1.0])
    return image, label, spacing


def pair_slices(img, mask, spacing_xyz):
    """Slices 2k and 2k+1 averaged: a slice gap twice as large; the mask is their union."""
    d = img.shape[0] // 2 * 2
    image = np.round(img[:d].astype(np.float32).reshape(d // 2, 2, *img.shape[1:]).mean(1)).astype(np.uint8)
    label = mask[:d].reshape(d // 2, 2, *mask.shape[1:]).any(1)
    spacing = np.array(spacing_xyz, float) * np.array([1.0, 1.0, 2.0])
    return image, label, spacing


def crop_box(mask: np.ndarray, margin: int = CROP_MARGIN) -> tuple[slice, ...]:
    """Every slice, in-plane bounding box of the mask plus a margin."""
    coords = np.argwhere(mask)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    return (slice(0, mask.shape[0]),) + tuple(
        slice(max(int(a) - margin, 0), min(int(b) + margin, s)) for a, b, s in zip(lo[1:], hi[1:], mask.shape[1:]))


_CROSS = np.zeros((3, 3, 3), bool)
_CROSS[1] = ndimage.generate_binary_structure(2, 1)


def split_pair(mask: np.ndarray, spacing_zyx, max_erode: int = SPLIT_MAX_ERODE) -> tuple[np.ndarray, np.ndarray]:
    """Two large parts of a mask (the lungs), separated by in-plane erosion and regrown; sorted by x.

    Returns two empty masks when no two large parts appear within max_erode erosions."""
    eroded = mask.copy()
    for steps in range(max_erode + 1):
        components, n = cc3d.connected_components(eroded.astype(np.uint8), connectivity=6, return_N=True)
        counts = np.bincount(components.ravel(), minlength=n + 1)
        counts[0] = 0
        order = np.argsort(counts)[::-1]
        if n >= 2 and counts[order[1]] >= 0.25 * counts[order[0]]:
            break
        eroded = ndimage.binary_erosion(eroded, _CROSS)
    else:
        empty = np.zeros(mask.shape, bool)
        return empty, empty
    seeds = np.zeros(mask.shape, np.uint8)
    seeds[components == order[0]] = 1
    seeds[components == order[1]] = 2
    dist, index = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    owner = seeds[tuple(index)]
    reach = mask & (dist <= steps + 1)
    a, b = reach & (owner == 1), reach & (owner == 2)
    if np.argwhere(a)[:, 2].mean() > np.argwhere(b)[:, 2].mean():
        a, b = b, a
    return fill_slices(a), fill_slices(b)


def finish(name: str, imgs: np.ndarray, spacing_xyz, layers: list[Layer], *, box: bool, source: str,
           licence: str, notes: dict | None = None) -> ValCase:
    """Paint layers in order (later wins), clean rule layers, renumber 1..K, describe each class."""
    paint = np.zeros(imgs.shape, np.int32)
    for index, layer in enumerate(layers, 1):
        if layer.task not in TASK_TYPES:
            raise ValueError(f"{name}: unknown task type {layer.task!r}")
        paint[layer.mask] = index
    gts = np.zeros(imgs.shape, np.uint8)
    classes = []
    for index, layer in enumerate(layers, 1):
        mask = paint == index
        if not layer.real:
            mask = drop_small(mask)
        voxels = int(mask.sum())
        if voxels < MIN_VOXELS:
            continue
        if len(classes) == 255:
            raise ValueError(f"{name}: more than 255 classes")
        gts[mask] = len(classes) + 1
        coords = np.argwhere(mask)
        extent = coords.max(axis=0) - coords.min(axis=0) + 1
        text = {"text": layer.text} if layer.text else {}
        classes.append({"label": len(classes) + 1, "name": layer.name, "task": layer.task, "voxels": voxels,
                        "box_fill": round(voxels / float(np.prod(extent)), 4), **text})
    return ValCase(name, np.ascontiguousarray(imgs, np.uint8), gts, np.asarray(spacing_xyz, float), classes, box,
                   source, licence, notes or {})


# --- CT ---------------------------------------------------------------------------------------------

LUNG_BODY_LEVEL = 145  # -500 HU in the lung window
SOFT_BODY_LEVEL = 20  # -129 HU in the soft-tissue window
SOFT_AIR_LEVEL = 5
BONE_LEVEL = 250


def chest_ct(name: str, imgs: np.ndarray, lesion: np.ndarray, spacing_xyz, source: str) -> ValCase:
    """Lung-window chest CT: body, right and left lung, bone, the real lesion (see module doc)."""
    body = body_mask(imgs, LUNG_BODY_LEVEL)
    air = body & (imgs <= LUNG_BODY_LEVEL)
    right, left = split_pair(air, np.asarray(spacing_xyz)[::-1])
    lungs = right | left
    bone = body & (imgs >= BONE_LEVEL) & ~lungs
    soft = body & ~air & ~lungs & ~bone
    window = crop_box(body)
    layers = [Layer("body", "organ", soft), Layer("lung_right", "organ", right), Layer("lung_left", "organ", left),
              Layer("bone", "thin", bone), Layer("lesion", "lesion", lesion, real=True)]
    layers = [Layer(ly.name, ly.task, ly.mask[window], ly.real) for ly in layers]
    return finish(name, imgs[window], spacing_xyz, layers, box=True, source=source, licence=LICENCES["pyradiomics"],
                  notes={"crop_zyx": [[s.start, s.stop] for s in window]})


def abdomen_ct(name: str, imgs: np.ndarray, spacing_xyz, source: str) -> ValCase:
    """Soft-tissue-window CT: body, bone, lung bases (see module doc)."""
    body = body_mask(imgs, SOFT_BODY_LEVEL)
    air = body & (imgs <= SOFT_AIR_LEVEL)
    components = cc3d.connected_components(air.astype(np.uint8), connectivity=6)
    top = np.unique(components[-1])
    lungs = fill_slices(np.isin(components, top[top > 0]))
    bone = body & (imgs >= BONE_LEVEL) & ~lungs
    soft = body & ~air & ~lungs & ~bone
    window = crop_box(body)
    layers = [Layer("body", "organ", soft), Layer("bone", "thin", bone), Layer("lung_bases", "thin", lungs)]
    layers = [Layer(ly.name, ly.task, ly.mask[window], ly.real) for ly in layers]
    return finish(name, imgs[window], spacing_xyz, layers, box=True, source=source, licence=LICENCES["amos"],
                  notes={"crop_zyx": [[s.start, s.stop] for s in window]})


def load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=True) as data:
        return {k: data[k] for k in data.files}


def build_lung1(path: Path) -> ValCase:
    d = load_npz(path)
    imgs, lesion, spacing = downsample(d["imgs"], d["gts"] > 0, d["spacing"], 2)
    return chest_ct("CT_valset_lung1_chest", imgs, lesion, spacing, f"{path.name}, 2x in-plane block mean")


def build_lung2(path: Path) -> ValCase:
    d = load_npz(path)
    imgs, lesion, spacing = pair_slices(d["imgs"], d["gts"] > 0, d["spacing"])
    return chest_ct("CT_valset_lung2_chest10mm", imgs, lesion, spacing, f"{path.name}, slice pairs (10 mm)")


def build_amos(path: Path) -> ValCase:
    d = load_npz(path)
    imgs, _, spacing = downsample(d["imgs"], np.zeros(d["imgs"].shape, bool), d["spacing"], 2)
    return abdomen_ct("CT_valset_amos0018_abdomen", imgs, spacing, f"{path.name}, 2x in-plane block mean")


# --- MR ---------------------------------------------------------------------------------------------


def kmeans_parcels(mask: np.ndarray, spacing_zyx, k: int, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Parcel index 1..k for every voxel of the mask (0 outside): k-means of positions in mm."""
    coords = np.argwhere(mask)
    points = coords * np.asarray(spacing_zyx, float)
    first = int(np.argmin(((points - points.mean(0)) ** 2).sum(1)))
    centres = [points[first]]
    dist = ((points - centres[0]) ** 2).sum(1)
    for _ in range(k - 1):  # farthest-point initialisation: deterministic
        centres.append(points[int(np.argmax(dist))])
        dist = np.minimum(dist, ((points - centres[-1]) ** 2).sum(1))
    centres = np.array(centres)
    for _ in range(iterations):
        assign = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        centres = np.array([points[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
    out = np.zeros(mask.shape, np.int32)
    out[tuple(coords.T)] = assign + 1
    return out


def connected_parcels(parcels: np.ndarray) -> np.ndarray:
    """Each parcel keeps its largest 26-component; the cut-off voxels are regrown geodesically
    (one 26-neighbour step at a time, highest neighbouring label first), so every parcel stays
    one piece; voxels no parcel reaches (islands) become background."""
    kept = np.zeros_like(parcels)
    for j in np.unique(parcels[parcels > 0]):
        kept[largest_component(parcels == j, connectivity=26)] = j
    orphans = (parcels > 0) & (kept == 0)
    while orphans.any():
        grown = ndimage.grey_dilation(kept, footprint=np.ones((3, 3, 3), bool))
        take = orphans & (grown > 0)
        if not take.any():
            break
        kept[take] = grown[take]
        orphans &= ~take
    return kept


def hemisphere_parcels(mask: np.ndarray, spacing_zyx, mid: float, prefix: str) -> list[Layer]:
    """PARCELS_PER_SIDE connected k-means parcels per hemisphere (R: x < mid), as parcel layers."""
    xs = np.arange(mask.shape[2])[None, None, :]
    layers = []
    for side, half in (("R", mask & (xs < mid)), ("L", mask & (xs >= mid))):
        parcels = connected_parcels(kmeans_parcels(half, spacing_zyx, PARCELS_PER_SIDE))
        layers += [Layer(f"{prefix}{side}{j}", "parcel", parcels == j) for j in range(1, PARCELS_PER_SIDE + 1)]
    return layers


def icbm_cases(path: Path) -> list[ValCase]:
    d = load_npz(path)
    imgs, gts, spacing = d["imgs"], d["gts"], d["spacing"]
    tissue = finish("MR_valset_icbm_tissue", imgs, spacing,
                    [Layer("gm", "thin", gts == 1, real=True, text="Gray matter in brain MRI"),
                     Layer("wm", "organ", gts == 2, real=True, text="White matter in brain MRI"),
                     Layer("csf", "thin", gts == 3, real=True, text="Cerebrospinal fluid in brain MRI")],
                    box=True, source=f"{path.name}, labels as they are", licence=LICENCES["icbm"])
    brain = (gts == 1) | (gts == 2)
    spacing_zyx = np.asarray(spacing, float)[::-1]
    mid = float(np.argwhere(brain)[:, 2].mean())
    parcels = finish("MR_valset_icbm_parcels", imgs, spacing, hemisphere_parcels(brain, spacing_zyx, mid, ""),
                     box=True, source=f"{path.name}, GM+WM split into k-means parcels", licence=LICENCES["icbm"],
                     notes={"midline_x": mid})
    cortex = finish("MR_valset_icbm_cortex_parcels", imgs, spacing,
                    hemisphere_parcels(gts == 1, spacing_zyx, mid, "ctx"), box=True,
                    source=f"{path.name}, GM ribbon split into k-means parcels", licence=LICENCES["icbm"],
                    notes={"midline_x": mid})
    return [tissue, parcels, cortex]


HEAD_LEVEL = 15


def build_brain2(path: Path) -> ValCase:
    d = load_npz(path)
    imgs, lesion = d["imgs"], d["gts"] > 0
    smooth = ndimage.median_filter(imgs, size=(1, 3, 3))
    head = body_mask(smooth, HEAD_LEVEL)
    window = crop_box(head)
    layers = [Layer("head", "organ", head[window]), Layer("lesion", "lesion", lesion[window], real=True)]
    return finish("MR_valset_brain2_head", imgs[window], d["spacing"], layers, box=True,
                  source=f"{path.name}, head by rule + real lesion", licence=LICENCES["pyradiomics"],
                  notes={"crop_zyx": [[s.start, s.stop] for s in window]})


# --- procedural ---------------------------------------------------------------------------------------


def _synth():
    from training import synth  # torch: imported only when procedural cases are built

    return synth


def seed(i: int) -> int:
    return _synth().VALIDATION_SEED + 100 + i


def _xyz(spacing_zyx) -> np.ndarray:
    return np.asarray(spacing_zyx, float)[::-1].copy()


def _synth_note(i: int) -> dict:
    synth = _synth()
    return {"seed": seed(i), "generator_version": synth.GENERATOR_VERSION}


def nuclei_case(count: int = NUCLEI, shape=(40, 160, 160), i: int = 0) -> ValCase:
    """Many small touching-allowed nuclei, microscopy look, no boxes."""
    synth = _synth()
    rng = np.random.default_rng(seed(i))
    spacing = np.array([1.0, 0.5, 0.5])
    extent = np.asarray(shape) * spacing
    labels = np.zeros(shape, np.uint8)
    for _ in range(count):
        radii = rng.uniform(2.2, 3.6) * rng.uniform(0.8, 1.2, 3)
        centre = extent * rng.uniform(0.08, 0.92, 3)
        mask = synth.blob(rng, shape, spacing, centre, radii, 0.25) & (labels == 0)
        labels[mask] = labels.max() + 1
    image = synth.render(rng, labels, np.ones(shape, bool), spacing, "microscopy", may_share=False)
    layers = [Layer(f"nucleus{j:02d}", "instance", labels == j) for j in range(1, int(labels.max()) + 1)]
    return finish("Microscopy_valset_nuclei", image, _xyz(spacing), layers, box=False,
                  source="procedural nuclei (synth.blob, microscopy render)", licence=LICENCES["synthetic"],
                  notes=_synth_note(i))


def vessel_trees(rng, shape, spacing_zyx, trees: int = 3) -> np.ndarray:
    """Branching tubes entering from the volume's faces: radius 1.0..2.2 mm at the root, x0.75 per
    branching level, random-walk centrelines (step 0.8 x the finest spacing, 60..120 steps per
    branch, branch probability 0.02 per step up to depth 2); each tree is one class."""
    labels = np.zeros(shape, np.uint8)
    spacing = np.asarray(spacing_zyx, float)
    extent = np.asarray(shape) * spacing
    step = 0.8 * spacing.min()
    for label in range(1, trees + 1):
        axis, side = int(rng.integers(3)), int(rng.integers(2))
        pos = extent * rng.uniform(0.25, 0.75, 3)
        pos[axis] = side * extent[axis] * 0.999
        direction = np.zeros(3)
        direction[axis] = 1.0 if side == 0 else -1.0
        stack = [(pos, direction, 0, rng.uniform(1.0, 2.2))]
        while stack:
            pos, direction, depth, radius = stack.pop()
            for _ in range(int(rng.integers(60, 121))):
                direction = direction + rng.normal(0, 0.12, 3)
                direction /= np.linalg.norm(direction)
                pos = pos + direction * step
                if np.any(pos < 0) or np.any(pos >= extent):
                    break
                centre = pos / spacing
                reach = radius / spacing
                lo = np.maximum(np.floor(centre - reach).astype(int), 0)
                hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, shape)
                grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
                ball = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, reach)) <= 1.0
                window = labels[tuple(slice(a, b) for a, b in zip(lo, hi))]
                window[ball & (window == 0)] = label
                if depth < 2 and rng.random() < 0.02:
                    turn = direction + rng.normal(0, 0.9, 3)
                    stack.append((pos.copy(), turn / np.linalg.norm(turn), depth + 1, radius * 0.75))
    return labels


def vessels_case(i: int = 1) -> ValCase:
    """Contrast-bright vessel trees in soft tissue (CT angiography look), no boxes."""
    synth = _synth()
    rng = np.random.default_rng(seed(i))
    shape, spacing = (64, 128, 128), np.array([1.0, 0.7, 0.7])
    labels = vessel_trees(rng, shape, spacing)
    image = 0.42 + 0.05 * synth.smooth_noise(rng, shape, 8) + 0.4 * (labels > 0)
    for _ in range(2):  # unlabelled bright bone-like blobs
        extent = np.asarray(shape) * spacing
        image[synth.blob(rng, shape, spacing, extent * rng.uniform(0.2, 0.8, 3), extent * 0.06, 0.3)] = 0.95
    image = ndimage.gaussian_filter(image, 0.7 / (spacing / spacing.min())) + rng.normal(0, 0.05, shape)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    layers = [Layer(f"vessel_tree{j}", "thin", labels == j) for j in range(1, int(labels.max()) + 1)]
    return finish("CT_valset_vessels", image, _xyz(spacing), layers, box=False,
                  source="procedural vessel trees (random-walk centrelines), CT angiography look",
                  licence=LICENCES["synthetic"], notes=_synth_note(i))


def organs_case(name: str, look: str, organs: int, lesions: int, shape, spacing, i: int) -> ValCase:
    """A body blob, large organs inside it and small lesions inside the organs (synth.blob)."""
    synth = _synth()
    rng = np.random.default_rng(seed(i))
    spacing = np.asarray(spacing, float)
    extent = np.asarray(shape) * spacing
    body = synth.blob(rng, shape, spacing, extent / 2, extent * 0.46, 0.1)
    labels = np.zeros(shape, np.uint8)
    for _ in range(organs):
        radii = extent * rng.uniform(0.12, 0.22, 3) if organs > 1 else extent * rng.uniform(0.25, 0.32, 3)
        centre = extent * (rng.uniform(0.3, 0.7, 3) if organs > 1 else 0.5)
        labels[synth.blob(rng, shape, spacing, centre, radii, 0.3) & body & (labels == 0)] = labels.max() + 1
    n_organs = int(labels.max())
    for _ in range(lesions):
        host = np.argwhere(labels > 0)
        centre = host[rng.integers(len(host))] * spacing
        radii = np.maximum(extent.min() * rng.uniform(0.05, 0.09, 3), spacing * 1.5)
        labels[synth.blob(rng, shape, spacing, centre, radii, 0.3) & body] = labels.max() + 1
    image = synth.render(rng, labels, body, spacing, look, may_share=False)
    layers = [Layer(f"organ{j}", "organ", labels == j) for j in range(1, n_organs + 1)]
    layers += [Layer(f"lesion{j - n_organs}", "lesion", labels == j)
               for j in range(n_organs + 1, int(labels.max()) + 1)]
    return finish(name, image, _xyz(spacing), layers, box=True, source=f"procedural organs (synth.blob, {look} render)",
                  licence=LICENCES["synthetic"], notes=_synth_note(i))


# --- the set ------------------------------------------------------------------------------------------


def builders() -> list[tuple[str, list[str], object]]:
    """(label, source file stems, build(paths) -> [ValCase]) in output order."""
    return [
        ("lung1", ["CT_PyRadiomics_lung1"], lambda p: [build_lung1(p[0])]),
        ("lung2", ["CT_PyRadiomics_lung2"], lambda p: [build_lung2(p[0])]),
        ("amos", ["CT_AMOS_amos_0018"], lambda p: [build_amos(p[0])]),
        ("icbm", ["MR_ICBM152_tissue"], icbm_cases_from),
        ("brain2", ["MR_PyRadiomics_brain2"], lambda p: [build_brain2(p[0])]),
        ("nuclei", [], lambda p: [nuclei_case()]),
        ("vessels", [], lambda p: [vessels_case()]),
        ("pet", [], lambda p: [organs_case("PET_valset_organs", "pet", 3, 2, (48, 96, 96), (3.0, 2.0, 2.0), 2)]),
        ("us", [], lambda p: [organs_case("US_valset_organ", "us", 1, 1, (64, 112, 112), (0.6, 0.5, 0.5), 3)]),
    ]


def icbm_cases_from(paths: list[Path]) -> list[ValCase]:
    return icbm_cases(paths[0])


def describe(case: ValCase) -> str:
    counts: dict[str, int] = {}
    for c in case.classes:
        counts[c["task"]] = counts.get(c["task"], 0) + 1
    tasks = ", ".join(f"{t} {n}" for t, n in counts.items())
    voxels = case.gts.size / 1e6
    return (f"{case.name}: shape {'x'.join(map(str, case.gts.shape))} ({voxels:.1f} M voxels), K={case.num_classes}, "
            f"{'box' if case.box else 'no-box'}, {tasks}")


def write(case: ValCase, out: Path) -> dict:
    labels = np.unique(case.gts)
    assert np.array_equal(labels[labels > 0], np.arange(1, case.num_classes + 1)), case.name
    texts = {c["label"]: c["text"] for c in case.classes if "text" in c}
    extra = {"text_prompts": pack_text_prompts(texts)} if texts else {}
    np.savez_compressed(out / f"{case.name}.npz", imgs=case.imgs, gts=case.gts, spacing=case.spacing, **extra)
    return {"box": case.box, "modality": case.name.split("_", 1)[0], "source": case.source, "licence": case.licence,
            "shape": list(case.gts.shape), "spacing_xyz": [float(v) for v in case.spacing], "classes": case.classes,
            **case.notes}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "valset")
    ap.add_argument("--only", help="comma list of builder labels (lung1,lung2,amos,icbm,brain2,nuclei,vessels,pet,us)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    tasks_path = args.out / "tasks.json"
    tasks = json.loads(tasks_path.read_text())["cases"] if tasks_path.exists() and only else {}
    if not only:  # a full build replaces the set: no stale case (say, of a source now absent) stays behind
        for stale in args.out.glob("*_valset_*.npz"):
            stale.unlink()
    for label, stems, build in builders():
        if only and label not in only:
            continue
        paths = [find_source(s) for s in stems]
        if any(p is None for p in paths):
            missing = [s for s, p in zip(stems, paths) if p is None]
            print(f"skipped {label}: source {missing} not found in {[str(p) for p in SEARCH]}", flush=True)
            continue
        for case in build(paths):
            tasks[case.name] = write(case, args.out)
            print(describe(case), flush=True)
    tasks_path.write_text(json.dumps({"task_types": list(TASK_TYPES), "cases": dict(sorted(tasks.items()))}, indent=1))
    print(f"{len(tasks)} cases -> {args.out} (tasks.json)", file=sys.stderr)


if __name__ == "__main__":
    main()
