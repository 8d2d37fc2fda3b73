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

What the engine knows of a class and how the classes' boxes relate is app.views; the box and
intensity models fused into a class's probabilities are app.fuse; what a click may change in
the previous mask is app.confine; the class's probabilities live on an app.canvas.ClassCanvas.
Training's simulated rounds call the same ClassSegmenter (training.train).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch

from app.autobox import grown_bounds, intensity_box, touches_open_side
from app.canvas import ClassCanvas, border_ramp
from app.clickfix import MAX_RADIUS, correct
from app.confine import claimed_balls, confine_to_click, confine_to_sliver, keep_click_direction
from app.experts import Expert, load_experts
from app.fallback import fallback_labels
from app.fuse import (
    blend_prior,
    click_refit,
    fill_box,
    fuse_edges,
    fuse_intensity,
    fuse_organ,
    fuse_tissue,
    named_tissue,
    parcel_penalty,
    spans_its_box,
    unlike_its_box_edges,
)
from app.io import Box, Case
from app.postprocess import StreamingFusion
from app.prior import box_prior, organ_llr
from app.prompts import Others
from app.roi import Roi, prompt_bounds, window_at
from app.state import RunState
from app.tissue import tissue_of
from app.views import ClassView, class_views, schedule

MAX_REGROW = 2          # extra global passes when the object runs out of its RoI
TIME_SAFETY = 1.5       # a class starts only if 1.5 x the slowest class so far fits
PRIOR_WEIGHT = 0.4      # round 0: p = 0.6 x network + 0.4 x box prior (app.fuse.blend_prior)
OPEN_AREA = 0.5         # the box prior runs into the scan's end slices for a holder whose box covers half the slice
CT_INTENSITY = 4.0      # round 0 on CT: log-odds + 4 x the mask's own intensity model (app.fuse.fuse_intensity)
VETO = 0.05             # a click's classical correction skips voxels the network gives < 5 % (> 95 % for bg)
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
