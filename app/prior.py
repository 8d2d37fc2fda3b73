"""The box prior: a classical estimate of the object in its box, the network's round-0 mask.

A shape prior (an ellipse inscribed in the 2D box, tapered to zero beyond z_min..z_max,
which the organisers' box gives exactly) plus an intensity model (histograms of the box
core vs the voxels around the box, log likelihood ratio, smoothed), refitted twice on its
own segmentation. Why it feeds the network: on real CT/MR this estimate alone beat the
learned engine on large organs (valset DSC it0 0.81 vs 0.51), while the network refines
masks it is given; so the engine hands it over as the previous mask of a class that has a
box and no previous mask (ClassSegmenter.prepare), and training sees the same.
"""

from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage

from app.io import Box

BINS = 32
CORE = 0.5  # normalised ellipse radius of the foreground sample
PRIOR_SLOPE = 3.0  # shape log-odds per unit of normalised radius
PRIOR_CAP = 1.0
REFITS = 2
LLR_CLIP = 3.0


MAX_VOXELS = 4e6  # larger boxes are estimated on an in-plane subsampled grid


def box_prior(image: np.ndarray, box: Box, spacing, open_ends: bool = False) -> np.ndarray:
    """The prior as a full boolean volume (empty when the box holds nothing).

    A box over MAX_VOXELS (a body on a 512 x 512 CT: 8 s and 1.4 GB at full resolution) is
    estimated on every f-th row and column; the global expert sees it zoomed out anyway.
    """
    lo, hi = box.bounds()
    f = max(1, int(np.ceil(np.sqrt(np.prod(hi - lo + 1) / MAX_VOXELS))))
    small = Box(box.z_min, box.z_max, box.z_mid, box.y_min // f, box.y_max // f, box.x_min // f, box.x_max // f)
    spacing = np.asarray(spacing, float) * [1, f, f]
    window, score = box_score(image[:, ::f, ::f], small, spacing, open_ends)
    mask = np.zeros(image[:, ::f, ::f].shape, bool)
    mask[window] = score > 0
    if f == 1:
        return mask
    return mask.repeat(f, 1).repeat(f, 2)[:, :image.shape[1], :image.shape[2]]


def box_geometry(shape, box, open_ends: bool = False) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """The RoI around a box, the normalised radius of the tapered ellipse, and the exact z range.

    `open_ends`: no taper towards a box side on the scan's first or last slice, where the scan
    cut the object (engine.ClassSegmenter.prepare: classes whose box holds another's)."""
    my, mx = max(3, (box.y_max - box.y_min + 1) // 3), max(3, (box.x_max - box.x_min + 1) // 3)
    lo = (max(box.z_min - 2, 0), max(box.y_min - my, 0), max(box.x_min - mx, 0))
    hi = (min(box.z_max + 3, shape[0]), min(box.y_max + my + 1, shape[1]), min(box.x_max + mx + 1, shape[2]))
    window = tuple(slice(a, b) for a, b in zip(lo, hi))
    radius, in_z = box_radius(box, window, shape[0] if open_ends else None)
    return window, radius, in_z


def box_radius(box, window: tuple[slice, ...], open_depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The normalised radius of the box's tapered ellipse (1 on its surface) on an image window,
    and the box's exact z range there; `open_depth`: the scan's slice count, to leave the ends
    the scan cut open (box_geometry)."""
    # float32 throughout: a body-sized box on a 512 x 512 x 300 CT is 78 M voxels
    z, y, x = (g.astype(np.float32) for g in np.ogrid[window])
    dz = z - box.z_mid
    half_z = np.where(dz < 0, box.z_mid - box.z_min + 1, box.z_max - box.z_mid + 1).astype(np.float32)
    if open_depth is not None:
        half_z[(dz < 0) & (box.z_min == 0)] = np.inf
        half_z[(dz > 0) & (box.z_max == open_depth - 1)] = np.inf
    taper = np.sqrt(np.clip(1.0 - (dz / half_z) ** 2, 0.0, 1.0))
    ry, rx = (box.y_max - box.y_min) / 2 + 0.5, (box.x_max - box.x_min) / 2 + 0.5
    planar = np.sqrt(((y - (box.y_min + box.y_max) / 2) / ry) ** 2 + ((x - (box.x_min + box.x_max) / 2) / rx) ** 2)
    radius = planar / np.maximum(taper, 1e-3)
    in_z = np.broadcast_to((z >= box.z_min) & (z <= box.z_max), radius.shape)
    return radius, in_z


def histogram(levels: np.ndarray, pseudo_count: float = 0.5) -> np.ndarray:
    """Smoothed, normalised grey-level histogram; a pseudo-count keeps log ratios finite."""
    counts = np.bincount(levels.ravel(), minlength=BINS).astype(float)
    counts = ndimage.gaussian_filter1d(counts, 1.0) + pseudo_count
    return counts / counts.sum()


def box_widening(size: int) -> int:
    """The organisers' largest widening of a side of the 2D box: int(5 x size / 256) voxels,
    for an image `size` voxels across that axis."""
    return 5 * size // 256


def grey_levels(image: np.ndarray) -> np.ndarray:
    return (image // (256 // BINS)).astype(np.uint8)


def intensity_llr(levels: np.ndarray, fg: np.ndarray, bg: np.ndarray, sigma) -> tuple[float, np.ndarray]:
    """The intensity model of fg against bg: its weight (the histograms' total variation, how
    much intensity can be trusted) and the smoothed log likelihood ratio at every voxel."""
    weight, table = level_model(levels[fg], levels[bg])
    return weight, ndimage.gaussian_filter(table[levels], sigma)


def level_model(fg: np.ndarray, bg: np.ndarray) -> tuple[float, np.ndarray]:
    """The grey levels `fg` against `bg`: the histograms' total variation (how much intensity can
    be trusted) and the log likelihood ratio per grey level, clipped symmetrically, which keeps
    the zero crossing in place when it is smoothed."""
    pf, pb = histogram(fg), histogram(bg)
    return float(0.5 * np.abs(pf - pb).sum()), np.clip(np.log(pf / pb), -LLR_CLIP, LLR_CLIP).astype(np.float32)


def smoothed_llr(table: np.ndarray, image: np.ndarray, spacing) -> np.ndarray:
    """A per-grey-level table looked up at every voxel of `image` and smoothed over one voxel of
    the finest axis (mm-consistent): a voxel's grey level alone is speckle."""
    return ndimage.gaussian_filter(table[grey_levels(image)], np.min(spacing) / np.asarray(spacing, float))


def box_score(image: np.ndarray, box, spacing, open_ends: bool = False) -> tuple[tuple[slice, ...], np.ndarray]:
    """Shape log-odds plus intensity log-likelihood ratio in the box RoI; <= 0 off the object."""
    window, radius, in_z = box_geometry(image.shape, box, open_ends)
    levels = grey_levels(image[window])
    # capped inside, so that clear intensity evidence can carve the ellipse (its caps overshoot)
    prior = np.where(in_z, np.minimum(PRIOR_SLOPE * (1.0 - radius), PRIOR_CAP), -np.inf)
    z_mid = box.z_mid - window[0].start
    in_box = np.zeros(radius.shape[1:], bool)
    in_box[box.y_min - window[1].start:box.y_max - window[1].start + 1,
           box.x_min - window[2].start:box.x_max - window[2].start + 1] = True
    prior[z_mid][~in_box] = -np.inf  # the 2D box bounds the object on its own slice
    spacing = np.asarray(spacing, dtype=float)
    sigma = spacing.min() / spacing  # one voxel on the finest axis, in mm-consistent units
    fg = in_z & (radius < CORE)
    bg = ~in_z | ~in_box[None]
    mask = fg
    for _ in range(REFITS + 1):
        weight, llr = intensity_llr(levels, fg, bg, sigma)
        score = prior + weight * llr
        mask = keep_core(score > 0, in_z & (radius < CORE))
        if not mask.any():
            mask = in_z & (radius < 1.0)
        fg, bg = mask, ~mask
    return window, np.where(mask, np.maximum(score, 1e-3), -np.inf).astype(np.float32)


def keep_core(mask: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Components touching the core (else the largest), holes filled slice by slice."""
    components = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    ids = np.unique(components[core & mask])
    if ids.size:
        mask = np.isin(components, ids[ids > 0])
    elif mask.any():
        mask = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


CLICK_NEIGHBOURHOOD = 1  # voxels around a click that sample its intensity (a 3 x 3 x 3 cube)
MIN_CLICK_SPREAD = 4.0   # grey levels (of 0..255), the floor of a click's intensity spread
CLICK_SEPARATION = 3.0   # spreads between an own and an other click's intensity for the other to count
CLICK_TYPICAL = 2.0      # spreads from an other click's intensity within which a voxel is like it
MIN_OWN_SAMPLE = 50      # voxels of a previous mask nearest its own level that may stand for an own click


def click_llr(image: np.ndarray, region: tuple[slice, ...], own: list, others: list,
              own_sample: np.ndarray | None = None, labelled: list = (), own_evidence: bool = False,
              sample_unlike_others: bool = False, foreign: list = ()) -> np.ndarray | None:
    """Log likelihood ratio, at every voxel of `image[region]` (uint8), of the nearest of the `own` clicks'
    intensities against the nearest of the `others'`: one Gaussian per click, fitted on its
    neighbourhood, with a shared spread; 0 where a voxel is not typical of any other click (a
    body's muscle is not like its bone click even when its one click sits in fat). Other clicks
    of about an own click's intensity are dropped. `own_sample`: intensities that count as one
    more own click (its median; not in the spread). `own_evidence`: a voxel typical of an own
    click keeps its (positive) ratio though no other click is near (a twin's gain in
    app.fuse.click_refit). `sample_unlike_others`: the own sample stands for the class by its part
    nearest its own level (nearest_own_part), as a previous mask can hold more of another tissue
    than of its own. `foreign`: clicks of a foreign tissue (a twin's positive clicks): an other
    click of about their intensity counts even when like a `labelled` one, and with
    `own_evidence` no level typical of one gains (ICBM tissue at widening seed 7: a CSF click's
    wide cube dropped the grey matter's click, and CSF's gain took the grey matter; DSC_AUC
    2.907 -> 3.056). None when either side has nothing. Why per click: the other side holds
    several tissues (grey matter and CSF against white matter)."""
    if not (own or own_sample is not None) or not others:
        return None
    def samples(points):
        cubes = []
        for p in points:
            sl = tuple(slice(max(c - CLICK_NEIGHBOURHOOD, 0), c + CLICK_NEIGHBOURHOOD + 1) for c in p)
            cubes.append(image[sl].astype(np.float32).ravel())
        return cubes
    def medians(cubes):
        return np.array([np.median(c) for c in cubes], np.float32)
    own_s, other_s = samples(own), samples(others)
    spread = max(MIN_CLICK_SPREAD, float(np.sqrt(np.mean([c.var() for c in own_s + other_s]))))
    other_levels = medians(other_s)
    if own_sample is not None and sample_unlike_others:
        own_sample = nearest_own_part(own_sample, other_levels)
        if own_sample is None and not own:
            return None
    own_levels = medians(own_s + ([own_sample] if own_sample is not None else []))
    # an other click of about an own click's intensity says intensity cannot tell them apart
    keep = np.abs(own_levels[:, None] - other_levels[None]).min(0) >= CLICK_SEPARATION * spread
    foreign_levels = medians(samples(foreign))
    if labelled:
        def gap(levels):  # each other click's distance to the nearest of `levels`
            return np.abs(levels[:, None] - other_levels[None]).min(0)
        unlabelled = gap(medians(samples(labelled))) >= CLICK_SEPARATION * spread
        if foreign:
            unlabelled |= gap(foreign_levels) < CLICK_TYPICAL * spread
        keep &= unlabelled
    if not keep.any():
        return None
    # a table over the 256 grey levels, then one lookup: a body canvas holds 80 M voxels
    levels = np.arange(256, dtype=np.float32)[:, None]
    other_d = np.abs(levels - other_levels[keep][None]).min(1)
    own_d = np.abs(levels - own_levels[None]).min(1)
    table = (other_d ** 2 - own_d ** 2) / np.float32(2 * spread ** 2)
    far = other_d > CLICK_TYPICAL * spread  # far from every other click: no evidence either way
    if own_evidence:  # ... unless typical of an own click
        far &= own_d > CLICK_TYPICAL * spread
    table[far] = 0.0
    if own_evidence and foreign:
        # a level typical of a twin's positive click is no own evidence, even where that click
        # was dropped above as about an own click's level (a wide spread from a thin tissue's click)
        near = np.abs(levels - foreign_levels[None]).min(1) <= CLICK_TYPICAL * spread
        np.minimum(table, 0.0, out=table, where=near)
    return table[image[region]]


def nearest_own_part(sample: np.ndarray, other_levels: np.ndarray, rounds: int = 10) -> np.ndarray | None:
    """The part of a previous mask's intensities nearer its own level than any other click's,
    the own level moved to that part's median until it settles (1D k-means with the other
    levels fixed); None when fewer than MIN_OWN_SAMPLE voxels are left."""
    sample = sample.astype(np.float32)
    to_others = np.abs(sample[:, None] - other_levels[None]).min(1)  # fixed: only the own level moves
    level = float(np.median(sample))
    for _ in range(rounds):
        part = sample[np.abs(sample - level) < to_others]
        if part.size < MIN_OWN_SAMPLE:
            return None
        new = float(np.median(part))
        if abs(new - level) < 0.5:
            return part
        level = new
    return part


EDGE_FLOOR = 1e-3  # a level seen on neither side of the box edge is no evidence (llr 0), whatever the sample sizes


def edge_llr(image: np.ndarray, box: Box, past_widening: bool = False) -> tuple[float, np.ndarray]:
    """The box-edge intensity model: its weight (the histograms' total variation) and the log
    likelihood ratio, per grey level (grey_levels), of the strips just inside the 2D box on z_mid
    against the ring just outside it.

    The organisers' box is the object's bounding box on z_mid, widened by at most
    int(5 x size / 256) voxels per side, so the object reaches into every inside strip of that
    width + 2 and never into the ring: levels common inside and rare outside are the object's,
    whatever its shape (a bone shell, lung bases around the heart, grey matter around white
    matter), where the box prior's model samples the box centre. A side at the image border
    has no ring and is left out (a body's box there holds the arms). Weight 0 when too little is left.

    `past_widening` (CT): the strips start past the band the widening may have added and are
    2 x its width + 2 deep. The widening is a random 0..5 per box, so the strips above hold
    anywhere from none to most of the band's background: on the valset's three CT box cases
    under four widening seeds, the bodies and bones at round 0 swung with the draw (lung1 DSC
    it0 0.77 to 0.88, the 10 mm chest 0.74 to 0.92); past it, mean it0 0.815 -> 0.859 and the
    full loop's DSC_AUC over seeds 2025 and 7 3.308 -> 3.463. Not for a shell: past the band
    a lining's strips (app.views.ClassView.lining: a skull, ribs) reach what it encloses
    (procedural head CT 1: skull DSC it0 0.830 -> 0.456; kept at the edge: 0.869, and the CT
    cases' it0 stays 0.859), nor outside CT: the ICBM brain box's deeper strips reach the white
    matter under the grey ribbon (it0 0.545 -> 0.506).
    """
    _, height, width = image.shape
    wy, wx = box_widening(height), box_widening(width)
    r = max(wy + 2, wx + 2, 4)
    y0, y1, x0, x1 = box.y_min, box.y_max, box.x_min, box.x_max
    ay, ax = (wy, wx) if past_widening else (0, 0)  # where the strips start, inside the box
    sy, sx = (2 * max(wy, wx) + 2,) * 2 if past_widening else (wy + 2, wx + 2)  # how deep they are
    band, core, sides = (np.zeros((height, width), bool) for _ in range(3))
    band[y0 + ay:y1 - ay + 1, x0 + ax:x1 - ax + 1] = True
    core[y0 + ay + sy:y1 - ay - sy + 1, x0 + ax + sx:x1 - ax - sx + 1] = True
    ring = np.zeros((height, width), bool)
    wide_y, wide_x = slice(max(y0 - r, 0), y1 + r + 1), slice(max(x0 - r, 0), x1 + r + 1)
    if y0 > 0:
        sides[:y0 + ay + sy] = ring[max(y0 - r, 0):y0, wide_x] = True
    if y1 < height - 1:
        sides[max(y1 - ay - sy + 1, 0):] = ring[y1 + 1:y1 + r + 1, wide_x] = True
    if x0 > 0:
        sides[:, :x0 + ax + sx] = ring[wide_y, max(x0 - r, 0):x0] = True
    if x1 < width - 1:
        sides[:, max(x1 - ax - sx + 1, 0):] = ring[wide_y, x1 + 1:x1 + r + 1] = True
    strips = band & ~core & sides
    if strips.sum() < 20 or ring.sum() < 20:
        return 0.0, np.zeros(BINS, np.float32)
    levels = grey_levels(image[box.z_mid])
    inside, outside = histogram(levels[strips], 0.0), histogram(levels[ring], 0.0)  # EDGE_FLOOR instead
    llr = np.log((inside + EDGE_FLOOR) / (outside + EDGE_FLOOR)).astype(np.float32)  # unclipped: see fuse_edges
    return float(0.5 * np.abs(inside - outside).sum()), llr


ORGAN_SHELL_MM = 8.0  # the shell around the parcels' boxes that samples what lies outside the parcellated organ


def organ_llr(image: np.ndarray, boxes: list[Box], spacing) -> tuple[float, np.ndarray]:
    """The parcellated organ's intensity model: its weight (the histograms' total variation) and
    the log likelihood ratio, per grey level, of the cores of all parcels' boxes against an
    in-plane shell ORGAN_SHELL_MM wide around the boxes' union, on the slices the union spans.

    Why: touching parcels (lobes, cortex parcels) tile one organ, so together their boxes say
    where it ends: one parcel's box corners hold the skull, the scalp and the CSF around the
    brain, and the parcel's own models (box prior, network) take what they hold for it. The
    shell lies beyond every parcel's box, so it samples only what is not the organ."""
    spacing = np.asarray(spacing, float)
    lo = np.min([b.bounds()[0] for b in boxes], axis=0)
    hi = np.max([b.bounds()[1] for b in boxes], axis=0)
    cores = []
    for box in boxes:
        radius, in_z = box_radius(box, box.slices())
        cores.append(image[box.slices()][in_z & (radius < CORE)])
    margin = np.ceil(ORGAN_SHELL_MM / spacing[1:]).astype(int)
    outer = (slice(lo[0], hi[0] + 1), slice(max(lo[1] - margin[0], 0), hi[1] + margin[0] + 1),
             slice(max(lo[2] - margin[1], 0), hi[2] + margin[1] + 1))
    shell = np.ones(image[outer].shape, bool)
    y0, x0 = lo[1] - outer[1].start, lo[2] - outer[2].start
    shell[:, y0:y0 + hi[1] - lo[1] + 1, x0:x0 + hi[2] - lo[2] + 1] = False
    core, around = np.concatenate(cores), image[outer][shell]
    if core.size < 20 or around.size < 20:
        return 0.0, np.zeros(BINS, np.float32)
    return level_model(grey_levels(core), grey_levels(around))
