"""The inference engine: per-class routing between the experts, fusion, and the time budget.

Per class (design.md, papers 000/003):
- frozen: no new click this round means the organisers found no error: keep prev_pred;
- box or previous mask: global expert on the zoomed RoI of box + positive clicks + mask,
  then the local expert at the newest click when the global ran zoomed (or the click lies
  outside its RoI), blended into the class's probabilities;
- clicks only (no-box start): local window at the click first, then the RoI is grown
  (app.autobox) and the global expert sees the whole object.
Classes with a new click go first, cheap before expensive; a class is only started when
the time measured so far says it can finish before the deadline. Unfinished classes fall
back (prev_pred, then box) exactly like the watchdog's salvage.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import cc3d
import numpy as np
import torch
from scipy import ndimage

from app.autobox import grown_bounds, intensity_box, touches_open_side
from app.clickfix import MAX_RADIUS, correct
from app.experts import Expert, load_experts
from app.fallback import fallback_labels
from app.io import Box, Case, ClassPrompts
from app.postprocess import StreamingFusion
from app.prior import (
    LLR_CLIP,
    box_prior,
    box_radius,
    box_widening,
    click_llr,
    edge_llr,
    grey_levels,
    intensity_llr,
    organ_llr,
    smoothed_llr,
)
from app.prompts import Others
from app.roi import Roi, prompt_bounds, window_at
from app.state import RunState
from app.tissue import tissue_llr, tissue_of

MAX_REGROW = 2          # extra global passes when the object runs out of its RoI
BLEND_VOXELS = 6        # local window border ramp, so the paste leaves no seam
TIME_SAFETY = 1.5       # a class starts only if 1.5 x the slowest class so far fits
PRIOR_WEIGHT = 0.4      # round 0: p = 0.6 x network + 0.4 x box prior (blend_prior)
OPEN_AREA = 0.5         # the box prior runs into the scan's end slices for a holder whose box covers half the slice
CT_INTENSITY = 4.0      # round 0 on CT: log-odds + 4 x the mask's own intensity model (fuse_intensity)
CONFINE_FACTOR = 2.0    # a click may change the previous mask within 2 x its error radius
CONFINE_SLACK_MM = 3.0  # ... plus this, with a soft edge of the same width
CONFINE_REACH_MM = 60.0
TWIN_IOU = 0.6          # classes whose boxes overlap this much are told apart by their clicks (click_refit)
LINING_IOU = 0.4        # a box inside another's covering this much of it is a layer of that object (a skull, ribs)
EDGE_STRENGTH = 2.0     # round 0 (CT, twins, box-filled): log-odds + 2 x weight x the box-edge model
TWIN_LOWERING = 1.0     # ... with weight 1 where a twin-relative model lowers (fuse_edges)
REFIT_STRENGTH = 4.0    # log-odds per unit of click_refit's log likelihood ratio (clipped at -3: flips a kept mask)
BOX_FILL_P = 0.6        # round 0: a mask that misses a side of its box gets the box cuboid at this probability
BOX_MISS = 0.05         # ... beyond the box's widening by more than this fraction of the box's size
UNLIKE_EDGES = -0.1     # ... or, on CT, whose grey levels' mean box-edge log likelihood ratio is below this
VETO = 0.05             # a click's classical correction skips voxels the network gives < 5 % (> 95 % for bg)
PARCEL_DEPTH = 1.0      # fusion: a parcel's bid loses this many log-odds per unit of normalised radius in its box
PARCEL_OUTSIDE = 9.0    # ... the radius counted outside its box's z range
MIN_ORGAN_PARCELS = 3   # parcels that tile one organ (fuse_organ)
CONTAINER_SHARE = 0.75  # a box holding this much of a box at least CONTAINER_SIZE times smaller contains it
CONTAINER_SIZE = 4.0    # ... (white matter around cortex parcels; click_refit)
MIN_CONTENTS = 3        # click_refit: a tissue around this many parcels' boxes (white matter around cortex parcels)
TWIN_RAISE = 1.0        # click_refit: a twin's own-click log likelihood ratio at which it claims held voxels at p 0.5
CORE_RADIUS = 0.8       # fuse_tissue models the box's ellipse shrunk to this: mostly the organ, not the corners
TISSUE_STRENGTH = 2.0   # round 0: log-odds per unit of a named tissue's log likelihood ratio (fuse_tissue)
ORGAN_STRENGTH = 2.0    # round 0: log-odds lowered by this x weight x the organ's model (fuse_organ)
# The intensity autobox for box-less classes raised no-box DSC_Final on held-out CT/MR lesions
# (0.23 -> 0.38 mean over 4 cases) but lowered it on synthetic microscopy cells (0.86 -> 0.71);
# paper 002 saw it hurt ultrasound. Challenge file names start with the modality.
NO_AUTOBOX_PREFIXES = ("Microscopy", "US")


def autobox_suits(name: str) -> bool:
    return not name.startswith(NO_AUTOBOX_PREFIXES)


def intensity_strength(name: str) -> float:
    """fuse_intensity's strength for a case: CT only."""
    return CT_INTENSITY if name.startswith("CT_") else 0.0


def case_options(name: str) -> dict:
    """ClassSegmenter's options that follow a case's modality (the file name's prefix), for the
    engine and for training's simulated rounds alike: the autobox, the CT intensity refit, and
    whether intensities are relative (shared_tissue: all but CT, whose Hounsfield units mean one
    tissue everywhere)."""
    return {"autobox": autobox_suits(name), "ct_intensity": intensity_strength(name),
            "shared_tissue": not name.startswith("CT_")}


@dataclass
class ClassView:
    """What the engine knows of one class this round.

    The previous mask is kept as its bounding region in the shared prev_pred, not as a
    volume per class: 100 classes on 300 x 512 x 512 would otherwise hold 8 GB of masks.
    """

    label: int
    prompts: ClassPrompts
    box: tuple[np.ndarray, np.ndarray] | None
    prev_region: tuple[slice, slice, slice] | None = None  # where the class is in prev_pred; None: absent
    prev_pred: np.ndarray | None = None
    holds_a_box: bool = False  # its box holds another class's box (a body around bones, a lung around a lesion)
    others: tuple[ClassPrompts, ...] = ()  # the other classes' prompts: a voxel has one label
    twins: tuple[ClassPrompts, ...] = ()  # the prompts of classes with about the same box (click_refit)
    cross_clicks: bool = True  # the others' positive clicks are negatives here (SEGFM_CROSS_CLICKS)
    parcel: bool = False  # its box partly overlaps a box that is neither a twin nor nested (touching parcels)
    lining: bool = False  # its box lies in another's and covers LINING_IOU of it: a layer of that object
    layers: tuple[ClassPrompts, ...] = ()  # the prompts of its linings and of the class it lines, twins aside
    organ: tuple[Box, ...] = ()  # a parcel's, in a case of MIN_ORGAN_PARCELS or more: every parcel's box (fuse_organ)
    containers: tuple[ClassPrompts, ...] = ()  # the prompts of classes whose box contains its box (contains_box)
    contents: tuple[ClassPrompts, ...] = ()  # the prompts of classes whose box its box contains (contains_box)
    alike: tuple[ClassPrompts, ...] = ()  # the prompts of non-twins whose box covers about its region (alike_boxes)
    companions: tuple[ClassPrompts, ...] = ()  # the alike where either has a twin: tissues of a brain (click_refit)

    @property
    def negatives(self) -> list:
        """The background clicks the experts see: the class's own and the other classes' positive
        clicks. Valset: nucleus clicks lowering DSC 107 -> 65 of 200, but the box-less vessels fell
        (DSC_Final 0.69 -> 0.62; keeping them out of zoomed RoIs or of the local pass did not help)."""
        return [*self.prompts.bg, *(q for o in self.others for q in o.fg if self.cross_clicks)]

    @property
    def claimed(self) -> list:
        """The other classes' positive clicks of this round: voxels this class must give up."""
        return [o.newest_click[0] for o in self.others if self.cross_clicks and o.has_new_click and o.newest_click[1]]

    @classmethod
    def single(cls, box: Box | None, fg, bg, order, prev: np.ndarray | None) -> ClassView:
        """One class outside a case file (training's simulated rounds); prev a boolean volume.

        An empty previous mask is no previous mask, as for a class absent from prev_pred.
        """
        prompts = ClassPrompts(box, list(fg), list(bg), list(order))
        corners = None if box is None else box.bounds()
        if prev is None or not prev.any():
            return cls(1, prompts, corners)
        prev_pred = prev.astype(np.uint8)
        return cls(1, prompts, corners, ndimage.find_objects(prev_pred)[0], prev_pred)

    def with_prev(self, mask: np.ndarray) -> ClassView:
        """This view with `mask` (boolean volume) as its previous mask, the other classes' voxels kept
        where it leaves them; unchanged when it is empty."""
        if not mask.any():
            return self
        prev_pred = mask.astype(np.uint8) * np.uint8(self.label)
        if self.prev_pred is not None:  # the other classes keep their voxels (ClassSegmenter.others_for)
            prev_pred = np.where(mask, prev_pred, self.prev_pred)
        return replace(self, prev_region=ndimage.find_objects(mask.astype(np.uint8))[0], prev_pred=prev_pred)

    def full_box(self) -> Box:
        """The box with its z_mid slice: the prompt's own, or the middle slice of an autobox."""
        return self.prompts.box if self.prompts.box is not None else Box.from_bounds(*self.box)

    @property
    def has_prev(self) -> bool:
        return self.prev_region is not None

    @property
    def lost(self) -> bool:
        """A boxed class clicked positive that holds no voxel of the previous segmentation: the
        fusion gave its whole mask to other classes (three twins of one brain box: CSF)."""
        return self.prompts.box is not None and not self.has_prev and bool(self.prompts.fg)

    @property
    def starts_at_click(self) -> bool:
        """No previous mask and no box to start from (box-less, or lost): the global pass looks
        at a native window at the newest positive click first (ClassSegmenter.global_pass)."""
        return not self.has_prev and (self.box is None or self.lost)

    @property
    def frozen(self) -> bool:
        return self.has_prev and bool(self.prompts.order) and not self.prompts.has_new_click

    def prev_mask(self) -> np.ndarray | None:
        """The class's previous mask as a full boolean volume (built on demand)."""
        if not self.has_prev:
            return None
        mask = np.zeros(self.prev_pred.shape, bool)
        mask[self.prev_region] = self.prev_pred[self.prev_region] == self.label
        return mask

    def prev_mask_on(self, window: tuple[slice, ...]) -> np.ndarray | None:
        """The previous mask on an image window, without building the full volume."""
        return self.prev_pred[window] == self.label if self.has_prev else None

    def bounds(self):
        """Inclusive (lo, hi) of box, positive clicks and previous mask; None when nothing is known."""
        parts = [b for b in (prompt_bounds(self.box, self.prompts.fg), self._prev_bounds()) if b is not None]
        if not parts:
            return None
        return np.min([p[0] for p in parts], axis=0), np.max([p[1] for p in parts], axis=0)

    def _prev_bounds(self):
        if not self.has_prev:
            return None
        return np.array([s.start for s in self.prev_region]), np.array([s.stop - 1 for s in self.prev_region])

    @property
    def cost(self) -> float:
        """A size proxy for scheduling: voxels of the box or of the previous mask."""
        bounds = self.bounds()
        return 0.0 if bounds is None else float(box_volume(bounds))


def class_views(case: Case, cross_clicks: bool = True) -> list[ClassView]:
    """One view per class, each holding the others' prompts; `cross_clicks`: their positive clicks
    are its negatives (ClassView.negatives, ClassView.claimed)."""
    regions = [] if case.prev_pred is None else ndimage.find_objects(case.prev_pred, max_label=case.num_classes)
    boxes = [None if p.box is None else p.box.bounds() for p in case.prompts]
    # each class's (index, box) of every other boxed class; none for a class without a box
    pairs = [[] if box is None else [(o, other) for o, other in enumerate(boxes) if o != c and other is not None]
             for c, box in enumerate(boxes)]
    twin_at = [[o for o, other in pairs[c] if box_iou(box, other) >= TWIN_IOU] for c, box in enumerate(boxes)]
    views = []
    for c, (prompts, box) in enumerate(zip(case.prompts, boxes)):
        region = regions[c] if c < len(regions) else None
        holds = any(holds_box(box, other) for _, other in pairs[c])
        others = tuple(other for o, other in enumerate(case.prompts) if o != c)
        twins = tuple(case.prompts[o] for o in twin_at[c])
        parcel = any(0 < box_iou(box, other) < TWIN_IOU and not holds_box(box, other) and not holds_box(other, box)
                     for _, other in pairs[c])
        lining = any(holds_box(other, box) and box_iou(other, box) >= LINING_IOU for _, other in pairs[c])
        layers = tuple(case.prompts[o] for o, other in pairs[c]
                       if o not in twin_at[c] and box_iou(box, other) >= LINING_IOU
                       and (holds_box(box, other) or holds_box(other, box)))
        containers = tuple(case.prompts[o] for o, other in pairs[c] if contains_box(other, box))
        contents = tuple(case.prompts[o] for o, other in pairs[c] if contains_box(box, other))
        alike_at = [o for o, other in pairs[c] if o not in twin_at[c] and alike_boxes(box, other)]
        alike = tuple(case.prompts[o] for o in alike_at)
        companions = tuple(case.prompts[o] for o in alike_at if twin_at[c] or twin_at[o])
        views.append(ClassView(c + 1, prompts, box, region, case.prev_pred, holds, others, twins, cross_clicks,
                               parcel, lining, layers=layers, containers=containers, contents=contents, alike=alike,
                               companions=companions))
    organ = tuple(v.prompts.box for v in views if v.parcel)
    return [replace(v, organ=organ) if v.parcel and len(organ) >= MIN_ORGAN_PARCELS else v for v in views]


def holds_box(outer: tuple[np.ndarray, np.ndarray], inner: tuple[np.ndarray, np.ndarray]) -> bool:
    """The inclusive corners `inner` lie within `outer`, and the two differ."""
    inside = (outer[0] <= inner[0]).all() and (inner[1] <= outer[1]).all()
    return bool(inside) and not (np.array_equal(outer[0], inner[0]) and np.array_equal(outer[1], inner[1]))


def contains_box(outer: tuple[np.ndarray, np.ndarray], inner: tuple[np.ndarray, np.ndarray]) -> bool:
    """`outer` holds CONTAINER_SHARE of `inner` and is CONTAINER_SIZE times its volume or more: the
    procedural brains' white matter around each cortex parcel's box, not a neighbouring lobe."""
    size_in, size_out = box_volume(inner), box_volume(outer)
    return bool(size_out >= CONTAINER_SIZE * size_in and box_overlap(outer, inner) >= CONTAINER_SHARE * size_in)


def alike_boxes(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    """The smaller box lies CONTAINER_SHARE in the larger, which is less than CONTAINER_SIZE times
    its volume: one region at about one scale, as a hemisphere's cortex in the brain's CSF box
    (IoU 0.43-0.49 on ICBM152, no twins), unlike a cortex parcel in its white matter's box."""
    small, large = sorted((box_volume(a), box_volume(b)))
    return large < CONTAINER_SIZE * small and box_overlap(a, b) >= CONTAINER_SHARE * small


def box_iou(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Intersection over union of two boxes given by inclusive corners."""
    inter = box_overlap(a, b)
    return float(inter / (box_volume(a) + box_volume(b) - inter))


def box_overlap(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> int:
    """Voxels two boxes (inclusive corners) share."""
    return int(np.prod(np.clip(np.minimum(a[1], b[1]) - np.maximum(a[0], b[0]) + 1, 0, None)))


def box_volume(box: tuple[np.ndarray, np.ndarray]) -> int:
    return int(np.prod(box[1] - box[0] + 1))


def schedule(views: list[ClassView]) -> list[ClassView]:
    """Classes to run, most urgent first: a new click, then the smaller ones."""
    active = [v for v in views if not v.frozen]
    return sorted(active, key=lambda v: (not v.prompts.has_new_click, v.cost))


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


def error_radius_mm(prev: np.ndarray, click, spacing, reach_mm: float = CONFINE_REACH_MM) -> float:
    """Distance from the click to the nearest voxel whose previous state differs, in mm.

    The official click sits at the deepest point of the largest error, so this is about
    that error's radius. Measured on a crop around the click; `reach_mm` when nothing differs.
    """
    spacing = np.asarray(spacing, float)
    half = np.ceil(reach_mm / spacing).astype(int)
    sl = tuple(slice(max(c - h, 0), c + h + 1) for c, h in zip(click, half))
    crop = prev[sl]
    local = tuple(c - s.start for c, s in zip(click, sl))
    same = crop == crop[local]
    if same.all():
        return reach_mm
    return float(min(ndimage.distance_transform_edt(same, sampling=spacing)[local], reach_mm))


def confine_to_click(canvas: ClassCanvas, view: ClassView, prev: np.ndarray, free: np.ndarray, spacing,
                     grow: bool = True) -> None:
    """Keep the previous mask except in a ball around the newest click sized by the error it marks.

    The network redraws the whole mask every round and drifts (large organs shrink round by
    round); the organisers' click only says where the largest error is. Only for a class with a
    box: without one the clicks are all there is of the object, and a click on a missed vessel
    branch must be free to add the branch (valset no-box DSC_AUC 2.061 confined, 2.300 free).
    For the same reason a fg click keeps what the network added in one piece with the ball
    (grown_from): a missed rib or lobe runs beyond it (valset box DSC_AUC 2.631 -> 2.650,
    thin 0.207 -> 0.222); a bg click's removals stay in the ball, as shrinking is the drift.
    Not with `grow` False (a parcel outside CT, ClassView.parcel): there the additions ran along
    the grey matter it shares with its neighbours (without them, valset cortex parcels: clicks
    lowering DSC 14 -> 2 of 70, DSC_AUC 3.109 -> 3.140; lobar parcels 3.490 -> 3.476; PET equal).
    `prev`: the previous mask (full volume); `free`: claimed_balls on the canvas region.
    """
    click = view.prompts.newest_click[0]
    weight = click_ball(canvas, prev, click, spacing)
    old = prev[canvas.region()]
    if view.prompts.newest_click[1] and grow:
        weight = np.maximum(weight, grown_from(canvas, old, weight > 0))
    weight = torch.from_numpy(np.maximum(weight, free))
    canvas.probs = weight * canvas.probs + (1 - weight) * torch.from_numpy(old.astype(np.float32))


def keep_click_direction(canvas: ClassCanvas, view: ClassView, prev: np.ndarray, free: np.ndarray) -> None:
    """A positive click only adds to the previous mask and a negative one only removes from it,
    except in the balls at other classes' new positive clicks, which the class may give up.

    Why: the click says where the largest error is, not that the rest of the mask was wrong;
    the network still redrew it (a positive click on an ultrasound organ removed 1691 voxels).
    Alone (an earlier engine) it lowered the US organ; with confine_to_sliver (then keeping the
    click's face neighbours too) and the clickfix sliver rule, valset (shipped weights): box
    DSC_AUC / DSC_Final 3.105 / 0.791 -> 3.112 / 0.799, no box 2.798 / 0.786 -> 2.803 / 0.801,
    clicks lowering DSC 43 -> 28 of 265 with a box and 65 -> 34 of 212 without (the US lesion
    3.214 -> 3.385)."""
    old = torch.from_numpy(prev[canvas.region()].astype(np.float32))
    kept = (torch.maximum if view.prompts.newest_click[1] else torch.minimum)(canvas.probs, old)
    free = torch.from_numpy(free)
    canvas.probs = free * canvas.probs + (1 - free) * kept


def confine_to_sliver(canvas: ClassCanvas, view: ClassView, prev: np.ndarray, free: np.ndarray) -> bool:
    """A click one voxel from where the previous mask turns right marks a sliver of the boundary
    (the organisers click the deepest voxel of the largest error): the previous mask stays, the
    clicked voxel flipped (and the balls at other classes' new positive clicks free). Why: on
    nuclei and lesions at DSC 0.85 to 0.98 such clicks are most of them, and the network's
    redraw moved tens of voxels for an error of a few. Valset, in the full set of rules: clicks
    lowering DSC without a box 34 -> 3 of 210, with a box 26 -> 22 of 265, box DSC_AUC 3.215 ->
    3.213 (the click's face neighbours too: 34 and 26; without this rule the nuclei: 52 of 198).
    True when it ran."""
    point, is_fg = view.prompts.newest_click
    if error_radius_mm(prev, point, (1.0, 1.0, 1.0)) > 1.0:
        return False
    free = torch.from_numpy(free)
    canvas.probs = free * canvas.probs + (1 - free) * torch.from_numpy(prev[canvas.region()].astype(np.float32))
    local = tuple(p - lo for p, lo in zip(point, canvas.lo))
    if all(0 <= q < n for q, n in zip(local, canvas.probs.shape)):
        canvas.probs[local] = float(is_fg)
    return True


def claimed_balls(canvas: ClassCanvas, view: ClassView, prev: np.ndarray, spacing) -> np.ndarray:
    """1 in the click_ball of every other class's new positive click inside the previous mask
    (on the canvas region): voxels this class must be free to give up."""
    weight = np.zeros(tuple(canvas.hi - canvas.lo), np.float32)
    for other in view.claimed:
        if prev[other]:
            weight = np.maximum(weight, click_ball(canvas, prev, other, spacing))
    return weight


def click_ball(canvas: ClassCanvas, prev: np.ndarray, click, spacing) -> np.ndarray:
    """1 within CONFINE_FACTOR x the click's error radius (+ slack) of the click, on the canvas region,
    falling to 0 over CONFINE_SLACK_MM."""
    radius = CONFINE_FACTOR * error_radius_mm(prev, click, spacing) + CONFINE_SLACK_MM
    coords = [(np.arange(lo, hi) - c) * s for lo, hi, c, s in zip(canvas.lo, canvas.hi, click, spacing)]
    dist = np.sqrt(coords[0][:, None, None] ** 2 + coords[1][None, :, None] ** 2 + coords[2][None, None, :] ** 2)
    return np.clip((radius + CONFINE_SLACK_MM - dist) / CONFINE_SLACK_MM, 0, 1).astype(np.float32)


def grown_from(canvas: ClassCanvas, old: np.ndarray, ball: np.ndarray) -> np.ndarray:
    """1 on the network's additions to the previous mask (`old`, on the canvas region) that are
    connected to the click's ball."""
    added = (canvas.probs > 0.5).numpy() & ~old
    pieces = cc3d.connected_components(added.astype(np.uint8), connectivity=26)
    touching = np.unique(pieces[ball & added])
    return np.isin(pieces, touching[touching > 0]).astype(np.float32)


def blend_prior(canvas: ClassCanvas, prior: np.ndarray, weight: float) -> None:
    """Round 0 of a boxed class: the network's probabilities averaged with its input, the box
    prior (app.prior; `prior` is its mask on the canvas region). With weight 0.4 the network
    must be sure (p < 0.17) to drop a prior voxel and surer (p > 0.83) to add one. Why: the
    network still degrades the prior on real CT trunks (valset, shipped weights: lungs 0.58 /
    0.34 from priors of 0.77 / 0.68); a mean of two estimators that err differently is safer
    than either. Valset, box DSC it0 on organs 0.717 -> 0.748, box DSC_AUC 2.589 -> 2.631 (a
    single weight tried, chosen on that set)."""
    canvas.probs = (1 - weight) * canvas.probs + weight * torch.from_numpy(prior.astype(np.float32))


def fuse_intensity(canvas: ClassCanvas, image: np.ndarray, spacing, strength: float,
                   only_lower_inside: bool) -> None:
    """Round 0 of a boxed CT class: the network's log-odds plus `strength` x the weighted log
    likelihood ratio of an intensity model fitted on its own mask against the rest of the
    canvas (app.prior.intensity_llr), i.e. one EM-like refit.

    Why CT only: Hounsfield units mean one tissue everywhere, so mask voxels of an intensity
    far more typical of the surroundings are errors (heart in a lung, air in a body), and
    missed voxels of the object's intensity are misses; in MR, PET and US intensity is relative
    and lesions are more than intensity (there it cost 0.03 to 0.06 DSC, unfused). A class whose
    box holds another's only loses confidence inside its mask: a body's or a lung's model would
    otherwise claim the bones or the lesion inside it (fused DSC 0.00 for the bones). So does a
    lining (ClassView.lining: a skull in its head, bones in a body), whose round-0 mask often
    holds the inside of its holder too (the brain), which its own model would then make surer:
    procedural head CTs (6 seeds, synth.head_scene, not in the valset), round-0 fused DSC of
    soft tissue / bone 0.08-0.81 / 0.25-0.93 -> 0.68-0.97 / 0.38-0.92; valset CT cases 0.743 /
    0.859 / 0.848 -> 0.743 / 0.859 / 0.837.
    """
    mask = (canvas.probs > 0.5).numpy()
    if not mask.any() or mask.all():
        return
    spacing = np.asarray(spacing, float)
    weight, llr = intensity_llr(grey_levels(image[canvas.region()]), mask, ~mask, spacing.min() / spacing)
    if only_lower_inside:
        np.minimum(llr, 0.0, out=llr, where=mask)
    shift_logits(canvas, llr, strength * weight)


def fuse_edges(canvas: ClassCanvas, image: np.ndarray, box: Box, twins: list[Box], spacing,
               past_widening: bool = False) -> bool:
    """Round 0: log-odds + EDGE_STRENGTH x weight x how much more the box-edge intensity model
    of `box` (app.prior.edge_llr) than any twin's claims a voxel's grey level, inside the box.

    For a class with twins (boxes with IoU >= TWIN_IOU): a per-class network gives twins about
    the same probabilities, and before the first click (click_refit) only intensity tells them
    apart; relative to the twins' models, as a body's box edges hold bone too. Valset round 0,
    fused DSC (shipped weights, first version): lung1 bone 0.357 -> 0.672, lung2 bone 0.064 ->
    0.520, ICBM grey / white matter 0.476 / 0.530 -> 0.814 / 0.669 (csf 0.078 -> 0.000). And for
    a class the box check filled (fill_box): its mask was another object, and the edge model
    sees what lies where the object meets its box, which for lung bases or a bone shell is not
    the box centre. And for
    every class on CT, where a grey level means one tissue everywhere (valset, with the above:
    AMOS DSC_AUC 3.045 -> 3.138, the 10 mm chest 3.338 -> 3.392, lung1 3.608 -> 3.592, its
    lesion's DSC_Final 0.898 -> 0.874).

    Where the twin-relative model lowers, it counts at TWIN_LOWERING, not at the own model's
    weight: a bone's box edges are mostly fat against air, so that weight (0.15 on the 10 mm
    chest) says nothing about how clearly the twins' models tell bone from soft tissue (llr
    -2.7 there). Raising stays at the own weight: at full weight a body claimed the lungs' vessels
    and a lesion (valset round 0, lung1 right lung 0.963 -> 0.925, 10 mm chest lesion 0.837 ->
    0.784). Valset round 0 fused DSC, bone: lung1 0.621 -> 0.682, 10 mm chest 0.577 -> 0.841
    (TWIN_LOWERING 1 and 2 tried; 2: 0.664, 0.835); full loop, box DSC_AUC / DSC_Final 3.356 /
    0.851 -> 3.399 / 0.859 (bones 3.037 -> 3.579 and 2.329 -> 3.363, ICBM tissue 2.683 ->
    2.723, nothing lower by 0.01), head CTs (harness.headct) 3.664 -> 3.671. `past_widening`
    (CT): the strips past the widening band (app.prior.edge_llr). True when it ran.

    On CT the `twins` include a holder's linings and a lining's holder (ClassView.layers): a
    body's box holds its bone's, and whether the two are twins hung on the boxes' random
    widening (valset lung1: IoU 0.6004 at seed 2025, 0.594 at seed 7, where the body alone
    kept the bone: bone DSC it0 0.87 -> 0.44). Round 0 with leg Z7, mean DSC it0 over box
    seeds 2025 / 7 / 11 (chosen on these): lung1 0.861 -> 0.923 (its swing over the seeds 0.108
    -> 0.015), procedural head CTs 0-5 0.786 -> 0.849, trunk CTs 0.660 -> 0.659, AMOS and the
    10 mm chest unchanged."""
    weight, table = edge_llr(image, box, past_widening)
    if weight == 0.0 or not canvas.probs.numel():
        return False
    if twins:  # compared unclipped: levels that both rings lack would saturate both models alike
        table = table - np.max([edge_llr(image, b, past_widening)[1] for b in twins], axis=0)
    table = np.clip(table, -LLR_CLIP, LLR_CLIP)
    if twins:  # lowering at TWIN_LOWERING, not at the own model's weight: see the docstring
        table = np.where(table < 0, table * (TWIN_LOWERING / weight), table)
    # smoothed like fuse_intensity's; unsmoothed, the speckle cost the CT bodies and bones later
    # (valset lung1 bone DSC_AUC 3.019 -> 2.287) for a gain on ICBM tissue (box mean 3.345 -> 3.346)
    shift_logits(canvas, llr_in_box(canvas, image, box, table, spacing), EDGE_STRENGTH * weight)
    return True


def llr_in_box(canvas: ClassCanvas, image: np.ndarray, box: Box, table: np.ndarray, spacing) -> np.ndarray:
    """A per-grey-level table's smoothed log likelihood ratio (app.prior.smoothed_llr) on the
    canvas, inside the box; 0 elsewhere."""
    inside, on_canvas = box_on_canvas(canvas, box)
    llr = np.zeros(canvas.probs.shape, np.float32)
    llr[on_canvas] = smoothed_llr(table, image[inside], spacing)
    return llr


def box_on_canvas(canvas: ClassCanvas, box: Box) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of the box on the canvas, as image slices and as canvas slices."""
    region = canvas.region()
    inside = tuple(slice(max(b.start, r.start), max(min(b.stop, r.stop), r.start))
                   for b, r in zip(box.slices(), region))
    return inside, tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(inside, region))


def named_tissue(view: ClassView) -> str | None:
    """The brain tissue a class's text names (app.tissue) when a class it could be taken for (a
    twin, container or content; for a parcel, a twin only) is named as another tissue, else None.
    Why a parcel's container and contents do not count (ClassView.parcel: cortex parcels under
    one white matter): a cortex parcel shares its level with its neighbours, which a tissue
    model cannot tell apart. Procedural cortex brains named "Cortical parcel k" and "Cerebral
    white matter" (harness.brains), DSC_AUC seeds 1/3/5/7 (chosen on) 2.267 / 1.585 / 2.522 /
    1.934 -> 2.210 / 1.451 / 2.547 / 2.096 with the parcels' rule, 2.192 / 1.413 / 2.701 / 2.063
    only lowering; held-out 9/11/13/15 1.715 / 1.675 / 2.403 / 2.580 -> 1.224 / 1.529 / 2.471 /
    2.589 only lowering. A hemisphere's cortex is a parcel too, beside its twin white matter.

    Classes of about one region at one scale (ClassView.alike) are related too, parcels or not:
    the brain's CSF beside each hemisphere's cortex and white matter (ICBM152 labelled so, real
    T1, chosen on: DSC it0 / DSC_AUC / DSC_Final 0.753 / 3.020 / 0.757 -> 0.796 / 3.172 / 0.794,
    CSF at round 0 0.370 -> 0.518); procedural aseg brains 0-11 2.634 / 0.678 -> 2.640 / 0.677
    (brain 2 2.805 -> 2.919, brain 11 2.782 -> 2.738, the rest equal); cortex brains 0-15 (the
    largest parcels beside the white matter) brain 5 2.522 -> 2.752, held-out 11 1.675 -> 1.750,
    the rest and every lobe brain equal; the valset's ICBM tissue case, twins already, equal."""
    tissue = tissue_of(view.prompts.text)
    related = (*view.twins, *view.alike, *(() if view.parcel else (*view.containers, *view.contents)))
    return tissue if tissue and {tissue_of(p.text) for p in related} - {None, tissue} else None


def fuse_tissue(canvas: ClassCanvas, image: np.ndarray, box: Box, tissue: str, spacing, brain: np.ndarray,
                keep_out: tuple[Box, ...] = ()) -> bool:
    """Round 0 of a class named_tissue gives: log-odds + TISSUE_STRENGTH x how much more its
    tissue's than the others' a voxel's grey level is (app.tissue.tissue_llr), inside the box,
    only lowering inside the `keep_out` boxes (unnamed classes it contains: deep grey nuclei,
    whose level a tissue would claim). True when it ran.

    The model is fitted where `brain` (the canvas's mask before the intensity rules: the network
    and the box prior, which give twins about the same mask) lies in the core of the box
    (CORE_RADIUS of its ellipse), and refused when its components sit on one tissue (app.tissue.SEPARATION).
    Beside a skull-stripped scan's padding a voxel mixes tissue with nothing, at CSF's level in
    T1, so the rule leaves that rim to the network: the ICBM template's CSF took 5.3 k voxels
    outside the brain there, and its background clicks then each cost a little DSC (valset ICBM
    tissue DSC_AUC 3.127 -> 3.228, clicks lowering DSC 7 -> 5 of 15; chosen on that case).
    Fitted on the whole core, it took a procedural brain's skull and background for a tissue
    and squeezed the three into two (aseg brain 3: DSC_AUC 2.617 -> 2.015). Without `keep_out`
    grey matter outbid the nuclei (aseg brains 4 / 5: 2.551 / 2.627, with it 2.609 / 2.722).

    Why: tissue twins are a coin toss before the first click (the box-edge models, fuse_edges,
    tell grey matter from white where their boxes differ, and CSF not at all). With the rim rule
    and app.prior.click_llr's veto on a twin's gain: valset ICBM tissue (real T1; SEPARATION was
    set on this image's mixture) DSC_AUC / DSC_Final 2.859 / 0.756 -> 3.228 / 0.808, CSF at round
    0 0.000 -> 0.663; at widening seed 7 2.970 -> 3.056; with Gaussian noise of sd 10 / 20 grey
    levels and a 15 % bias field (not chosen on) 2.672 / 2.647 -> 2.799 / 3.053. Procedural
    brains, whose tissues overlap far more (then gated at 1.25 SDs, so mostly off): tissue brains
    seeds 0-7 1.756 -> 1.908, 8-15 1.965 -> 1.995; aseg-like brains 0-11 2.620 / 0.674 -> 2.635 /
    0.678; lobe and cortex brains unchanged (parcels are left out, named_tissue). With the gate at
    0.5 SDs (generator v9): aseg brains 0-11 (chosen on) 2.713 / 0.692 -> 2.827 / 0.714, 12-19
    2.674 / 0.679 -> 2.732 / 0.690; tissue brains 0-7 1.934 -> 1.917, 8-15 2.098 -> 2.121."""
    if not canvas.probs.numel():
        return False
    inside, on_canvas = box_on_canvas(canvas, box)
    radius, in_z = box_radius(box, inside)
    padding = int(image.min()) + 1
    sample = image[inside][brain[on_canvas] & in_z & (radius < CORE_RADIUS)]
    table = tissue_llr(sample, tissue, padding)
    if table is None:
        return False
    llr = llr_in_box(canvas, image, box, table, spacing)
    llr[on_canvas][ndimage.binary_dilation(image[inside] <= padding)] = 0.0  # a stripped brain's rim
    for other in keep_out:
        _, there = box_on_canvas(canvas, other)
        np.minimum(llr[there], 0.0, out=llr[there])
    shift_logits(canvas, llr, TISSUE_STRENGTH)
    return True


def click_refit(canvas: ClassCanvas, image: np.ndarray, view: ClassView, shared_tissue: bool) -> bool:
    """From round 1, a boxed class loses confidence wherever the intensity is typical of one of
    its negative clicks, or of a twin's positive click, and unlike its own positive clicks (or,
    before it has any, its previous mask's median): app.prior.click_llr, log-odds - 4 x up to 3.

    Why: the network moves a mask little around a click, while the click often marks a tissue
    that is wrong everywhere in the mask (white matter under a cortex parcel, soft tissue in the
    lung bases). Twins (boxes with IoU >= TWIN_IOU: grey matter, white matter and CSF in one
    brain box; bone and soft tissue in one head) even get the same probabilities from a
    per-class network, so only their clicks tell them apart. With `shared_tissue` (MR, PET, US,
    microscopy: relative intensities) a negative click like another class's positive click is
    ignored: parcels of one brain share their tissues, so such a click marks a neighbour, not a
    foreign tissue. Valset, box DSC_AUC: ICBM tissue 1.452 -> 2.586, cortex parcels 2.662 ->
    3.114, AMOS 1.719 -> 1.957 (on CT without that rule); lobar parcels without it 3.488 -> 3.443,
    with it 3.483. Not for a container's click (ClassView.containers): white matter around cortex
    parcels is their foreign tissue, not a neighbour's share of theirs (procedural cortex brains,
    harness.brains 1 and 3: DSC_AUC 2.167 / 1.571 -> 2.247 / 1.585; the valset's MR, PET and US
    box cases equal). Only lowering: the Gaussians extrapolate badly to intensities no click
    sampled. True when it ran.

    Twins in shared tissue also gain where a voxel is typical of their own positive clicks and
    some class holds it in the previous segmentation: a tissue class (CSF in a brain box) that
    lost round 0 to its twins gets its tissue back wherever they hold it, not only in the ball
    at its click (probability sigmoid(REFIT_STRENGTH x (llr - TWIN_RAISE)), llr capped at 2 x
    TWIN_RAISE; unheld voxels, the background around a skull-stripped brain, gain nothing).
    Valset ICBM tissue DSC_AUC / DSC_Final 2.723 / 0.710 -> 2.830 / 0.746 (CSF 1.318 -> 1.659),
    at widening seed 7 2.727 / 0.715 -> 2.971 / 0.784; 8 procedural brains labelled by tissue
    (`python -m harness.brains --tissues --seeds 0 8`) 1.589 / 0.436 -> 1.667 / 0.457. No other
    valset case has twins in shared tissue.

    A twin in shared tissue without positive clicks stands for itself by the part of its previous
    mask nearer its own level than any other click (app.prior.nearest_own_part), not by the whole
    mask's median: grey matter that took the white matter at round 0 and then got only negative
    clicks had a median near white matter, so its refit removed its own tissue or nothing.
    Tissue brains DSC_AUC / DSC_Final, seeds 0-7 (chosen on) 1.667 / 0.457 -> 1.756 / 0.465,
    held-out seeds 8-15 1.831 / 0.504 -> 1.965 / 0.528; valset ICBM tissue 2.830 -> 2.859 (seed 7:
    2.971 -> 2.970). For every class in shared tissue (parcels too) brains 2.480 -> 2.433.

    A tissue around MIN_CONTENTS or more parcels' boxes (white matter around cortex parcels) is
    told from them as a twin is: their positive clicks are its negatives and it gains like a
    twin. Why: a parcel's refit lowers the white matter it took at round 0, but the voxels went to
    the background, as the container kept its previous mask away from its own clicks (procedural
    cortex brain 7: 18 k of its 63 k voxels after click 1). Procedural cortex brains DSC_AUC,
    seeds 1, 3, 5, 7 (chosen on) 2.247 / 1.585 / 2.455 / 1.924 -> 2.267 / 1.585 / 2.522 / 1.934,
    held-out 9, 11, 13, 15 1.715 / 1.675 / 2.388 / 2.462 -> 1.715 / 1.675 / 2.403 / 2.580; a lobe
    around one smaller lobe's box (brain 14) fell 2.861 -> 2.822 before MIN_CONTENTS; the
    valset's MR, PET and US box cases equal.

    A twin's own negative click of its twin's tissue marks that tissue, even where a neighbour
    (the other hemisphere's white matter) has a positive click of it: cortex whose round-0 mask
    was its twin white matter kept it through five negative clicks, as the neighbour's click
    excused them all. Procedural aseg-like brains (`python -m harness.brains --aseg --seeds 0
    12`, new to the rule, which was chosen on other seeds) DSC_AUC / DSC_Final 2.573 / 0.661 ->
    2.620 / 0.674 (9 of 12 up or equal); without the neighbours' excuse for twins at all, one
    brain of the chosen-on seeds fell 2.621 -> 2.432 (its white matter's negative clicks on the
    other hemisphere's then removed its own tissue).

    Outside CT a companion (ClassView.companions: a class of about its box's region and scale,
    where either of the two has a twin) counts as a twin: the brain's CSF beside each
    hemisphere's cortex and white matter, whose clicks alone tell them apart after round 0 (the
    texts come at iteration 0 only). `python -m harness.brains --icbm` (real T1, chosen on)
    DSC_AUC / DSC_Final 3.172 / 0.794 -> 3.331 / 0.835 (CSF 2.061 -> 2.863), at widening seed 7
    3.110 -> 3.289, with noise of sd 10 and a 15 % bias field 3.153 -> 3.310; aseg brains 0-11
    2.640 / 0.677 -> 2.672 / 0.685; no valset case has alike boxes outside CT. Why a twin is
    required: a large cortex parcel beside the white matter around all parcels has an alike box,
    and the white matter's positive click, of a partial-volume level near the grey ribbon's, took
    two thirds of the parcel's voxels after its first click (generator v9 cortex brains 3 and 5,
    chosen on, 1.469 / 2.214 -> 1.689 / 2.240 with the twin required; held-out 9, 11, 15 1.742 /
    1.775 / 2.496 -> 1.772 / 1.775 / 2.496)."""
    if not canvas.probs.numel():
        return False
    twins = (*view.twins, *view.companions) if shared_tissue else view.twins
    around = view.contents if shared_tissue and len(view.contents) >= MIN_CONTENTS else ()
    negatives = [*view.prompts.bg, *(q for t in (*twins, *around) for q in t.fg)]
    region = canvas.region()
    sample = None
    if not view.prompts.fg:  # about a million voxels are plenty for a median (a body mask: 40 M)
        step = max(1, int(np.ceil((np.prod([s.stop - s.start for s in region]) / 1e6) ** (1 / 3))))
        thinned = tuple(slice(s.start, s.stop, step) for s in region)
        prev = view.prev_mask_on(thinned)
        sample = image[thinned][prev] if prev is not None and prev.any() else None
    neighbours = [o for o in view.others if not any(o is t for t in (*twins, *view.containers, *around))]
    labelled = [q for o in neighbours for q in o.fg] if shared_tissue else []
    raise_ = bool(shared_tissue and (twins or around) and view.prompts.fg and view.prev_pred is not None)
    foreign = [q for t in twins for q in t.fg] if shared_tissue else []
    llr = click_llr(image, region, view.prompts.fg, negatives, sample, labelled, own_evidence=raise_,
                    sample_unlike_others=bool(shared_tissue and twins), foreign=foreign)
    if llr is None:
        return False
    gain = np.where(view.prev_pred[region] > 0, np.minimum(llr, 2 * TWIN_RAISE), -LLR_CLIP) if raise_ else None
    shift_logits(canvas, np.clip(llr, -LLR_CLIP, 0.0, out=llr), REFIT_STRENGTH)
    if gain is not None:
        floor = torch.from_numpy((gain - TWIN_RAISE) * REFIT_STRENGTH).sigmoid_()
        canvas.probs = torch.maximum(canvas.probs, floor)
    return True


def fuse_organ(canvas: ClassCanvas, image: np.ndarray, model: tuple[float, np.ndarray], spacing) -> None:
    """Round 0 of a parcel of shared tissue (ClassView.organ): log-odds lowered by ORGAN_STRENGTH x
    weight x the parcellated organ's intensity model (app.prior.organ_llr) where a grey level is
    more typical of what lies around all the parcels' boxes than of their cores.

    Why: a lobe's box corners hold skull, scalp and CSF, which its box prior and the network
    took for the lobe (procedural brains, harness.brains: 25 to 53 k such voxels per lobe case
    at round 0). Only lowering: a level the shell lacks says nothing of which parcel it is.
    Procedural brains DSC_AUC 2.323 -> 2.357 (lobes 2.911 / 2.733 -> 2.925 / 2.764, cortex
    parcels 2.169 / 1.481 -> 2.167 / 1.571); valset ICBM lobar parcels 3.503 -> 3.519, cortex
    parcels 3.179 -> 3.211, PET 3.475 -> 3.495 (the rest of MR and US equal). Strength 4:
    brains 2.367, but ICBM lobar 3.498 and cortex 3.173; a 4 mm shell: brains 2.352."""
    weight, table = model
    if weight == 0.0 or not canvas.probs.numel():
        return
    shift_logits(canvas, smoothed_llr(np.minimum(table, 0.0), image[canvas.region()], spacing), ORGAN_STRENGTH * weight)


def spans_its_box(canvas: ClassCanvas, box: Box) -> bool:
    """The mask reaches every side of the organisers' 2D box on its slice z_mid, up to the box's
    random widening (at most int(5 x image size / 256) voxels per side), one voxel more and a
    boundary error of BOX_MISS of the box's size.

    The box is the object's bounding box on z_mid, so a round-0 mask that stays clear of a side
    is another object: the lung bases' mask was the heart between them (DSC 0.000; box fill
    0.399), as the head CT's bone was its brain in the independent set (issue 9). Such a class
    gets the box (fill_box) instead: valset AMOS DSC it0 0.401 -> 0.580. Without BOX_MISS a
    right lung whose mask stopped 7 voxels short of a side (allowed: 6) got the box too (DSC
    it0 0.962 -> 0.918); the heart stops 15 short of 143."""
    z = box.z_mid - canvas.lo[0]
    if not 0 <= z < canvas.probs.shape[0]:
        return False
    mask = np.zeros(canvas.shape[1:], bool)
    mask[canvas.lo[1]:canvas.hi[1], canvas.lo[2]:canvas.hi[2]] = (canvas.probs[z] > 0.5).numpy()
    mask = mask[box.y_min:box.y_max + 1, box.x_min:box.x_max + 1]
    if not mask.any():
        return False
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    slack_y = box_widening(canvas.shape[1]) + 1 + BOX_MISS * height
    slack_x = box_widening(canvas.shape[2]) + 1 + BOX_MISS * width
    return (ys.min() <= slack_y and height - 1 - ys.max() <= slack_y
            and xs.min() <= slack_x and width - 1 - xs.max() <= slack_x)


def unlike_its_box_edges(canvas: ClassCanvas, image: np.ndarray, box: Box) -> bool:
    """The round-0 mask's voxels in the box are on balance more typical of the ring around the
    box than of the strips just inside it (mean box-edge log likelihood ratio, app.prior.edge_llr,
    below UNLIKE_EDGES): the mask is another object, though it spans the box.

    Why: the box check (spans_its_box) catches a mask that is another object only when that
    object stops short of a side. At native resolution AMOS's lung bases got the soft tissue
    between them, which spans their box (round-0 DSC 0.001; 0.944 on the 2x downsampled valset
    case, where the network's mask stopped 8 voxels short). CT only (grey levels mean one
    tissue): on MR the brain2 lesion's right mask scores -0.04. With the strips past the
    widening band (as fuse_edges on CT, there except for linings), mean over the round-0 masks of the valset's CT box
    classes under widening seeds 2025, 7, 11 and 13, and of the native lung1 and AMOS: lung bases
    -0.16 to -0.21, every other class 0.06 or more (with the strips at the box edge a lung1 class
    fell below -0.1 under seed 13). UNLIKE_EDGES is -0.1, not 0, so that an organ of about its
    surroundings' density (a pancreas), whose mean sits near 0, keeps its mask."""
    weight, table = edge_llr(image, box, past_widening=True)
    if weight == 0.0:
        return False
    levels = grey_levels(image[box.slices()][(canvas.window(box.slices()) > 0.5).numpy()])
    return bool(levels.size) and float(np.clip(table, -LLR_CLIP, LLR_CLIP)[levels].mean()) < UNLIKE_EDGES


def fill_box(canvas: ClassCanvas, box: Box) -> None:
    """The box cuboid at BOX_FILL_P: the network's mask there was another object, however sure
    (the heart between the lung bases), so what the class holds in its box is left to its box-edge
    intensity model (fuse_edges) and to the fusion, which gives a voxel to a class that is surer.
    Valset AMOS lung bases, round 0: 0.000 (the heart) -> 0.537 with the box's floor raised to
    0.6 and the heart kept; 0.913 with the cuboid set to 0.6 and the edge model."""
    canvas.window(box.slices()).fill_(BOX_FILL_P)


def shift_logits(canvas: ClassCanvas, llr: np.ndarray, scale: float) -> None:
    """The canvas's log-odds plus `scale` x `llr` (float32 on the canvas region), in place: a body
    canvas on a 300 x 512 x 512 CT is 300 MB per float volume."""
    logits = torch.logit(canvas.probs, eps=1e-4).add_(torch.from_numpy(llr).mul_(scale))
    canvas.probs = logits.sigmoid_()


def parcel_penalty(view: ClassView, canvas: ClassCanvas, shared_tissue: bool) -> torch.Tensor | None:
    """The fusion penalty of a parcel of shared tissue (ClassView.parcel, not CT): PARCEL_DEPTH x
    the normalised radius of its box's tapered ellipse (app.prior.box_radius). Where touching
    parcels' masks overlap, the voxel goes to the one in whose box it lies deeper: the boxes are
    all that tells one tissue apart. Why: on 1 mm the network's parcel masks overlap more, and
    the plain argmax cost the ICBM lobar parcels 0.025 at round 0 against 2 mm (0.821; with this
    0.843; 2 mm 0.846 -> 0.852). Valset DSC_AUC: lobar parcels 3.476 -> 3.503, cortex parcels
    3.140 -> 3.179, PET 3.485 -> 3.475 (its lesions' boxes partly overlap organs'). The
    box-deepest claimant for every class instead collapsed lesions and organs in or beside other
    boxes (README).
    None for any other class."""
    if not (view.parcel and shared_tissue and view.prompts.box is not None and canvas.probs.numel()):
        return None
    radius, in_z = box_radius(view.prompts.box, canvas.region())
    return torch.from_numpy(PARCEL_DEPTH * np.where(in_z, np.minimum(radius, PARCEL_OUTSIDE), PARCEL_OUTSIDE))


def border_ramp(size, width: int = BLEND_VOXELS) -> torch.Tensor:
    """1 inside, falling linearly to ~0 at the window faces: the local paste's blend weight."""
    ramps = [torch.clamp(torch.minimum(torch.arange(n) + 1, n - torch.arange(n)).float() / width, 0, 1) for n in size]
    return ramps[0][:, None, None] * ramps[1][None, :, None] * ramps[2][None, None, :]


class ClassSegmenter:
    """Runs the experts for one class at a time on one image: the one prediction path.

    The engine calls it per class; training calls it for the rounds it simulates, with its
    live model wrapped as an Expert, so training sees the predictions the engine makes.
    """

    def __init__(self, image: np.ndarray, spacing, global_expert: Expert, local_expert: Expert | None,
                 clock=time.monotonic, autobox: bool = True, click_guard: bool = True, confine: bool = True,
                 prior_weight: float = PRIOR_WEIGHT, ct_intensity: float = 0.0, refit: bool = True,
                 shared_tissue: bool = True, box_check: bool = True, edges: bool = True, organ: bool = True,
                 tissue: bool = True):
        self.clock, self.autobox, self.click_guard, self.confine = clock, autobox, click_guard, confine
        self.box_check, self.edges, self.organ, self.tissue = box_check, edges, organ, tissue
        self.refit, self.shared_tissue = refit, shared_tissue
        self.prior_weight, self.ct_intensity = prior_weight, ct_intensity
        self.image = torch.from_numpy(image)
        self.spacing = spacing
        self.shape = image.shape
        self.global_expert = global_expert
        self.local_expert = local_expert or global_expert  # the global net on a native window
        self.organ_models: dict[tuple[Box, ...], tuple[float, np.ndarray]] = {}  # organ_llr per organ

    def segment(self, view: ClassView) -> tuple[ClassCanvas, tuple[str, ...], float]:
        """The class's probabilities, the experts that produced them and the seconds they took."""
        started = self.clock()
        from_prior = view.box is not None and not view.has_prev and not view.lost
        view = self.prepare(view)
        canvas, roi, steps = self.global_pass(view)
        if from_prior and view.has_prev and self.prior_weight and canvas.probs.numel():
            blend_prior(canvas, view.prev_mask_on(canvas.region()), self.prior_weight)
            steps = (*steps, "prior")
        tissue = (named_tissue(view) if from_prior and self.tissue and self.shared_tissue
                  and view.prompts.box is not None else None)
        brain = (canvas.probs > 0.5).numpy() if tissue else None  # what the intensity rules have not yet reshaped
        if from_prior and self.organ and view.organ and self.shared_tissue and canvas.probs.numel():
            if view.organ not in self.organ_models:  # one model per case, not one per parcel
                self.organ_models[view.organ] = organ_llr(self.image.numpy(), list(view.organ), self.spacing)
            fuse_organ(canvas, self.image.numpy(), self.organ_models[view.organ], self.spacing)
            steps = (*steps, "organ")
        if from_prior and self.ct_intensity and canvas.probs.numel():
            fuse_intensity(canvas, self.image.numpy(), self.spacing, self.ct_intensity,
                           only_lower_inside=view.holds_a_box or view.lining)
            steps = (*steps, "intensity")
        filled = (from_prior and self.box_check and view.prompts.box is not None and canvas.probs.numel()
                  and (not spans_its_box(canvas, view.prompts.box)
                       or (not self.shared_tissue and unlike_its_box_edges(canvas, self.image.numpy(),
                                                                           view.prompts.box))))
        if filled:
            fill_box(canvas, view.prompts.box)
            steps = (*steps, "boxfill")
        twins = [t.box for t in view.twins if t.box is not None]
        rivals = twins + ([] if self.shared_tissue else [p.box for p in view.layers if p.box is not None])
        if (from_prior and self.edges and view.prompts.box is not None and (twins or filled or not self.shared_tissue)
                and fuse_edges(canvas, self.image.numpy(), view.prompts.box, rivals, self.spacing,
                               past_widening=not (self.shared_tissue or view.lining))):
            steps = (*steps, "edges")
        if tissue:
            keep_out = tuple(p.box for p in view.contents if p.box is not None and tissue_of(p.text) is None)
            if fuse_tissue(canvas, self.image.numpy(), view.prompts.box, tissue, self.spacing, brain, keep_out):
                steps = (*steps, "tissue")
        newest = view.prompts.newest_click
        if roi is not None and newest is not None and (roi.zoomed or not roi.contains(newest[0])):
            self.local_pass(canvas, view, newest[0])
            steps = (*steps, "local")
        if self.click_guard and self.follow_click(canvas, view):
            steps = (*steps, "clickfix")
        if self.confine and view.has_prev and view.prompts.has_new_click and canvas.probs.numel():
            # built once for the three rules: a full-volume mask, and balls on the canvas, which they do not move
            prev = view.prev_mask()
            free = claimed_balls(canvas, view, prev, self.spacing)
            if view.prompts.box is not None:
                confine_to_click(canvas, view, prev, free, self.spacing, grow=not (view.parcel and self.shared_tissue))
                steps = (*steps, "confined")
            keep_click_direction(canvas, view, prev, free)
            if confine_to_sliver(canvas, view, prev, free):
                steps = (*steps, "sliver")
        if (self.refit and view.prompts.box is not None and not from_prior
                and click_refit(canvas, self.image.numpy(), view, self.shared_tissue)):
            steps = (*steps, "refit")
        return canvas, steps, self.clock() - started

    def prepare(self, view: ClassView) -> ClassView:
        """The view the experts see: an autobox for a box-less class known by a click, then the
        box prior (app.prior) as the previous mask of a boxed class that has none, unless it is
        lost (ClassView.lost): its box prior had its round and lost the fusion, and given it
        again with a click, the network returned the whole box at p > 0.9, which took the brain
        from its twins (valset ICBM tissue at prior weight 0.2: DSC 0.572 at iteration 0, 0.030
        after the first click; now 0.634). A lost class starts like a box-less one (global_pass).

        A class whose box holds another's (a body, a lung around a lesion) gets the prior with
        open ends: where its box reaches the scan's first or last slice, the scan cut it, and a
        taper there shrank the whole prior (on 15 slices of 10 mm, the body 0.66 DSC). Valset,
        box cases: the 10 mm chest's body DSC it0 0.758 -> 0.959, AMOS body 0.928 -> 0.957, organ
        DSC_AUC 3.635 -> 3.726; its bone, which the surer body now outbids, 0.748 -> 0.577. For
        every class (lung bases and bones too) it cost AMOS's lung bases all (0.925 -> 0.000).
        Only for a holder whose 2D box covers OPEN_AREA of the slice (a body, a head): a lung
        holding a lesion tapers though the scan cuts it, and at native resolution lung1's right
        lung, which reaches both end slices there, got an open prior 2.2x its truth (round-0
        DSC 0.903; tapered 0.957; halved valset case 0.955 -> 0.950)."""
        view = self.with_autobox(view)
        if view.box is None or view.has_prev or view.lost:
            return view
        box = view.full_box()
        area = (box.y_max - box.y_min + 1) * (box.x_max - box.x_min + 1) / (self.shape[1] * self.shape[2])
        return view.with_prev(box_prior(self.image.numpy(), box, self.spacing,
                                        open_ends=view.holds_a_box and area >= OPEN_AREA))

    def follow_click(self, canvas: ClassCanvas, view: ClassView) -> bool:
        """The classical correction around the newest click (app.clickfix) on top of the network.

        When the mask leaves the clicked voxel itself wrong, the correction edits that mask.
        When the network did follow the click, it still moves the mask little (valset: +0.002
        DSC per click with a box), so the correction of the previous mask is applied as well,
        except where the network is sure of the opposite (VETO): a click on a lesion must not
        spill into the tissue around it. Measured with the shipped weights on the valset (box
        DSC_AUC / DSC_Final / clicks lowering DSC): without 2.560 / 0.643 / 35 of 265; with,
        unvetoed 2.580 / 0.653 / 38; vetoed 2.589 / 0.657 / 27. True when it changed the mask."""
        newest = view.prompts.newest_click
        if newest is None:
            return False
        point, is_fg = newest
        reach = MAX_RADIUS + 2
        window = tuple(slice(max(p - reach, 0), min(p + reach + 1, n)) for p, n in zip(point, self.shape))
        probs = canvas.window(window)
        local = tuple(p - w.start for p, w in zip(point, window))
        followed = bool(probs[local] > 0.5) == is_fg
        if followed and not view.has_prev:
            return False
        before = view.prev_mask_on(window) if followed else (probs > 0.5).numpy()
        labels = before.astype(np.uint8)
        correct(labels, self.image.numpy()[window], 1, local, is_fg)
        changed = torch.from_numpy(labels.astype(bool) != before)
        if followed:
            changed &= (probs > VETO) if is_fg else (probs < 1 - VETO)
        probs[changed] = float(is_fg)
        return bool(changed.any())

    def with_autobox(self, view: ClassView) -> ClassView:
        """A box-less class known by a positive click gets the intensity region's box."""
        p = view.prompts
        if self.autobox and view.box is None and not view.has_prev and p.fg:
            box = intensity_box(self.image.numpy(), self.spacing, p.fg[0])
            if box is not None:
                return replace(view, box=box)
        return view

    def global_pass(self, view: ClassView) -> tuple[ClassCanvas, Roi | None, tuple[str, ...]]:
        """The global expert on the object's RoI, regrown while the object runs out of it.

        Without box and previous mask (or for a lost class) a native window at the newest positive
        click comes first and its mask sets the RoI. Each regrown pass replaces the last one (no stale
        probabilities where an older RoI stuck out). Returns the canvas, the final RoI and
        the steps taken; (empty canvas, None, ()) when nothing is known of the class.
        """
        p = view.prompts
        canvas, steps = ClassCanvas(self.shape), ()
        prev = view.prev_mask()
        bounds = view.bounds()
        if view.starts_at_click:
            if not p.fg:
                return canvas, None, ()
            self.local_pass(canvas, view, p.fg[-1])
            prev, steps = canvas.mask_full(), ("local",)
            bounds = prompt_bounds(None, p.fg, prev)
        prev_t = None if prev is None else torch.from_numpy(prev)
        for _ in range(MAX_REGROW + 1):
            roi = self.global_expert.roi_for(*bounds)
            logits = self.global_expert.logits(self.image, roi, self.spacing, *self.prompts_for(view), prev_t,
                                               others=self.others_for(view))
            canvas = ClassCanvas(self.shape)
            canvas.put(logits, roi)
            mask = (logits > 0).numpy()
            if not touches_open_side(mask, roi, self.shape):
                break
            bounds = grown_bounds(mask, roi, self.shape, *bounds)
        return canvas, roi, (*steps, "global")

    @staticmethod
    def prompts_for(view: ClassView) -> tuple:
        """(box, positive clicks, negative clicks) as both experts see them; training builds its
        samples from the same, so the network learns on the engine's inputs."""
        return view.box, view.prompts.fg, view.negatives

    @staticmethod
    def others_for(view: ClassView) -> Others:
        """The other classes as both experts see them: the boxes of its neighbours, and the voxels
        they hold in the previous segmentation (app.prompts.Others); training builds its samples
        from the same. A container's or a content's box is left out: it does not show where the
        class ends (a parcel's container box covers its whole RoI, and a white matter's box lies
        under all its parcels' boxes). Leg W trained on this (harness/EXPERIMENTS.md). Those boxes
        get channels of their own (app.prompts.CHANNELS)."""
        nested = (*view.containers, *view.contents)
        beside = (o for o in view.others if o.box is not None and not any(o is n for n in nested))
        return Others(tuple(o.box.bounds() for o in beside), view.prev_pred, view.label,
                      containers=tuple(o.box.bounds() for o in view.containers),
                      contents=tuple(o.box.bounds() for o in view.contents))

    def local_pass(self, canvas: ClassCanvas, view: ClassView, centre) -> None:
        """The local expert on a native window at `centre`, seeing the canvas's mask as the
        previous one, blended into the canvas (a ramp at the window faces leaves no seam)."""
        roi = window_at(centre, self.local_expert.patch)
        prev = torch.from_numpy(canvas.mask_on(roi))
        logits = self.local_expert.logits(self.image, roi, self.spacing, *self.prompts_for(view), prev,
                                          prev_on_crop=True, others=self.others_for(view))
        canvas.put(logits, roi, None if not canvas.probs.numel() else border_ramp(roi.size))


def run(case: Case, state: RunState | None, deadline: float, experts=None, clock=time.monotonic) -> np.ndarray:
    """The engine behind `python -m app` (signature fixed by app.__main__)."""
    loading = clock()
    global_expert, local_expert = experts if experts is not None else load_experts()
    log(f"{case.name}: experts ready in {clock() - loading:.2f}s")
    if global_expert is None:
        log(f"{case.name}: no weights in weights/: prompt-only fallback")
        return fallback_labels(case)
    views = class_views(case, cross_clicks=os.environ.get("SEGFM_CROSS_CLICKS", "1") == "1")
    frozen = [v for v in views if v.frozen]
    fusion = StreamingFusion(case.image.shape)
    done: set[int] = {v.label for v in frozen}

    keep = np.zeros(256, np.uint8)
    keep[[v.label for v in frozen]] = [v.label for v in frozen]

    def current() -> np.ndarray:
        labels = fusion.labels()
        if frozen:
            kept = keep[case.prev_pred]
            np.copyto(labels, kept, where=kept > 0)
        return labels

    if state is not None:
        with state.lock:
            state.partial, state.done = current, set(done)
    options = case_options(case.name)
    autobox = os.environ.get("SEGFM_AUTOBOX", "1") == "1" and options["autobox"]
    click_guard = os.environ.get("SEGFM_CLICK_GUARD", "1") == "1"
    confine = os.environ.get("SEGFM_CONFINE", "1") == "1"
    prior_weight = env_fraction("SEGFM_PRIOR_WEIGHT", PRIOR_WEIGHT)
    ct_intensity = options["ct_intensity"] if os.environ.get("SEGFM_CT_INTENSITY", "1") == "1" else 0.0
    refit = os.environ.get("SEGFM_CLICK_REFIT", "1") == "1"
    box_check = os.environ.get("SEGFM_BOX_CHECK", "1") == "1"
    edges = os.environ.get("SEGFM_EDGES", "1") == "1"
    organ = os.environ.get("SEGFM_ORGAN", "1") == "1"
    tissue = os.environ.get("SEGFM_TISSUE", "1") == "1"
    segmenter = ClassSegmenter(case.image, case.spacing, global_expert, local_expert, clock,
                               autobox=autobox, click_guard=click_guard, confine=confine, prior_weight=prior_weight,
                               ct_intensity=ct_intensity, refit=refit, shared_tissue=options["shared_tissue"],
                               box_check=box_check, edges=edges, organ=organ, tissue=tissue)
    reserve = 1.0 + case.image.size / 80e6  # final fusion and the compressed write
    slowest = 0.0  # the slowest class so far: what a class is sure to need
    todo = schedule(views)
    for view in todo:
        now = clock()
        if now + TIME_SAFETY * slowest > deadline - reserve:
            log(f"{case.name}: time is short: class {view.label} and later ones fall back")
            break
        canvas, steps, seconds = segmenter.segment(view)
        penalty = parcel_penalty(view, canvas, options["shared_tissue"])
        with state.lock if state is not None else nullcontext():
            fusion.add(view.label, canvas.probs, canvas.region(), penalty)
            done.add(view.label)
            if state is not None:
                state.done.add(view.label)
        slowest = max(slowest, seconds)
        log(f"{case.name}: class {view.label} {'+'.join(steps) or 'nothing to go on'} {clock() - now:.2f}s")
    return fallback_labels(case, current(), done)


def env_fraction(name: str, default: float) -> float:
    """A number in [0, 1] from the environment; a bad value is reported and the default used."""
    text = os.environ.get(name)
    try:
        value = default if text is None else float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        log(f"{name}={text!r} is not a number in [0, 1]: using {default}")
        return default
    return value


def log(message: str) -> None:
    print(f"engine: {message}", file=sys.stderr, flush=True)
