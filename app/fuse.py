"""Box and intensity models fused into a class's probabilities around the network's.

Round 0: the box prior's blend, the CT intensity refit, the box-edge models, a named tissue's
model, the parcellated organ's model, and the box check. From round 1: the click intensity
refit. Last, the parcels' fusion penalty. Each function's docstring holds the measurement that
kept it; the engine decides which apply to a class (app.engine.ClassSegmenter.segment; the
penalty in app.engine.run). The rules shift the canvas's log-odds in place (shift_logits).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from app.canvas import ClassCanvas
from app.io import Box
from app.prior import LLR_CLIP, box_radius, box_widening, click_llr, edge_llr, grey_levels, intensity_llr, smoothed_llr
from app.tissue import tissue_llr, tissue_of
from app.views import ClassView

EDGE_STRENGTH = 2.0     # round 0 (CT, twins, box-filled): log-odds + 2 x weight x the box-edge model
TWIN_LOWERING = 1.0     # ... with weight 1 where a twin-relative model lowers (fuse_edges)
REFIT_STRENGTH = 4.0    # log-odds per unit of click_refit's log likelihood ratio (clipped at -3: flips a kept mask)
BOX_FILL_P = 0.6        # round 0: a mask that misses a side of its box gets the box cuboid at this probability
BOX_MISS = 0.05         # ... beyond the box's widening by more than this fraction of the box's size
UNLIKE_EDGES = -0.1     # ... or, on CT, whose grey levels' mean box-edge log likelihood ratio is below this
PARCEL_DEPTH = 1.0      # fusion: a parcel's bid loses this many log-odds per unit of normalised radius in its box
PARCEL_OUTSIDE = 9.0    # ... the radius counted outside its box's z range
MIN_CONTENTS = 3        # click_refit: a tissue around this many parcels' boxes (white matter around cortex parcels)
TWIN_RAISE = 1.0        # click_refit: a twin's own-click log likelihood ratio at which it claims held voxels at p 0.5
REFIT_KEEP = 0.5        # click_refit: on CT, one after a positive click keeping less of the mask is undone
CORE_RADIUS = 0.8       # fuse_tissue models the box's ellipse shrunk to this: mostly the organ, not the corners
TISSUE_STRENGTH = 2.0   # round 0: log-odds per unit of a named tissue's log likelihood ratio (fuse_tissue)
ORGAN_STRENGTH = 2.0    # round 0: log-odds lowered by this x weight x the organ's model (fuse_organ)


def box_on_canvas(canvas: ClassCanvas, box: Box) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of the box on the canvas, as image slices and as canvas slices."""
    region = canvas.region()
    inside = tuple(slice(max(b.start, r.start), max(min(b.stop, r.stop), r.start))
                   for b, r in zip(box.slices(), region))
    return inside, tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(inside, region))


def llr_in_box(canvas: ClassCanvas, image: np.ndarray, box: Box, table: np.ndarray, spacing) -> np.ndarray:
    """A per-grey-level table's smoothed log likelihood ratio (app.prior.smoothed_llr) on the
    canvas, inside the box; 0 elsewhere."""
    inside, on_canvas = box_on_canvas(canvas, box)
    llr = np.zeros(canvas.probs.shape, np.float32)
    llr[on_canvas] = smoothed_llr(table, image[inside], spacing)
    return llr


def shift_logits(canvas: ClassCanvas, llr: np.ndarray, scale: float) -> None:
    """The canvas's log-odds plus `scale` x `llr` (float32 on the canvas region), in place: a body
    canvas on a 300 x 512 x 512 CT is 300 MB per float volume."""
    logits = torch.logit(canvas.probs, eps=1e-4).add_(torch.from_numpy(llr).mul_(scale))
    canvas.probs = logits.sigmoid_()


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
    1.775 / 2.496 -> 1.772 / 1.775 / 2.496).

    Outside shared tissue (CT) a refit after a positive click that would keep less than
    REFIT_KEEP of the mask is undone: the click says the mask misses something, not that most of
    it is wrong. A lung at DSC 0.93 whose positive click fell on a vessel after negative clicks
    near the parenchyma's level lost its parenchyma to the refit (valset lung1 at widening seed 11
    with the fine-tune Z25: 0.929 -> 0.597; fine-tunes of the shipped weights lost lung1 that way
    at some seeds before). With the shipped weights no refit after a positive click on the valset's
    CT box runs (widening seeds 2025, 7, 11) keeps less than 0.80, so they are unchanged; of 36
    such runs of four held-out fine-tunes one changed: lung1 at seed 11, DSC_AUC 3.142 -> 3.732
    (harness/EXPERIMENTS.md)."""
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
    newest = view.prompts.newest_click
    # shift_logits builds a new tensor, so `before` stays the pre-refit state (held only when needed)
    before = canvas.probs if not shared_tissue and newest is not None and newest[1] else None
    shift_logits(canvas, np.clip(llr, -LLR_CLIP, 0.0, out=llr), REFIT_STRENGTH)
    if before is not None and (canvas.probs > 0.5).sum() < REFIT_KEEP * (before > 0.5).sum():
        canvas.probs = before
        return False
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
