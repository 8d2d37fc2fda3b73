"""What the engine knows of each class in a round, and how the classes' boxes relate.

A class is seen with the others' prompts (a voxel has one label), and its box's relation to
theirs decides which rules apply to it: twins (about the same box), a holder and its linings,
touching parcels, containers and contents, alike boxes. Every rule that uses a relation says
why in its own docstring (app.fuse, app.confine, app.engine). schedule() orders the classes of a
round.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from app.io import Box, Case, ClassPrompts
from app.roi import prompt_bounds

TWIN_IOU = 0.6          # classes whose boxes overlap this much are twins (app.fuse: fuse_edges, click_refit)
LINING_IOU = 0.4        # a box inside another's covering this much of it is a layer of that object (a skull, ribs)
MIN_ORGAN_PARCELS = 3   # parcels that tile one organ (app.fuse.fuse_organ)
CONTAINER_SHARE = 0.75  # a box holding this much of a box at least CONTAINER_SIZE times smaller contains it
CONTAINER_SIZE = 4.0    # ... (white matter around cortex parcels; app.fuse.click_refit)


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
