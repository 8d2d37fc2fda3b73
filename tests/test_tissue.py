"""Brain tissues named by text prompts (app.tissue) and their round-0 rule (fuse_tissue)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.canvas import ClassCanvas
from app.fuse import MIN_CONTENTS, fuse_tissue, named_tissue
from app.io import Box, Case, ClassPrompts
from app.prior import grey_levels
from app.tissue import CSF, GREY, WHITE, three_tissues, tissue_llr, tissue_of
from app.views import ClassView, class_views


@pytest.mark.parametrize("text, tissue", [
    ("Gray matter in brain MRI", GREY), ("Left-Cerebral-Cortex", GREY), ("Cortical parcel 3 in brain MRI", GREY),
    ("White matter in brain MRI", WHITE), ("Left-Cerebral-White-Matter", WHITE),
    ("Cerebrospinal fluid in brain MRI", CSF), ("Left-Lateral-Ventricle", CSF),
    ("Left thalamus in brain MRI", None), ("Brain lesion in MRI", None), ("CT scan of the left kidney cortex", None),
    ("Left adrenal gland", None), ("White matter hyperintensities in brain MRI", None),
    ("Brain tumor edema in MRI", None), ("", None)])
def test_a_text_names_a_brain_tissue_only_in_a_brain(text, tissue):
    assert tissue_of(text) == tissue


def brain(t1: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A skull-stripped brain in a 40^3 volume (padding 0): white matter inside a 3-voxel grey
    ribbon, a 1-voxel CSF rim and a CSF ventricle; T1 or T2 grey levels with noise. Returns the
    image and the tissue map (1 CSF, 2 grey, 3 white)."""
    z, y, x = np.ogrid[:40, :40, :40]
    r = np.sqrt((z - 19.5) ** 2 + (y - 19.5) ** 2 + (x - 19.5) ** 2)
    tissue = np.select([r < 13, r < 16, r < 17], [3, 2, 1], 0).astype(np.uint8)
    tissue[17:22, 17:22, 15:25] = 1
    levels = {True: (0, 50, 130, 200), False: (0, 220, 130, 70)}[t1]
    noise = np.random.default_rng(seed).normal(0, 8, tissue.shape)
    image = np.where(tissue > 0, np.take(levels, tissue) + noise, 0)
    return np.clip(image, 0, 255).astype(np.uint8), tissue


BOX = Box(2, 37, 20, 2, 37, 2, 37)


@pytest.mark.parametrize("t1", [True, False])
def test_the_named_tissue_s_levels_win_in_t1_and_t2_alike(t1):
    """Grey matter is the middle tissue, CSF the lighter of the two others, whichever is darker."""
    image, tissue = brain(t1)
    levels = grey_levels(image)
    for name, label in ((CSF, 1), (GREY, 2), (WHITE, 3)):
        llr = tissue_llr(image[tissue > 0], name, padding=1)[levels]
        assert np.median(llr[tissue == label]) > 1.0, name
        assert all(np.median(llr[tissue == other]) < -1.0 for other in {1, 2, 3} - {label}), name
    assert (tissue_llr(image, GREY, padding=1)[levels][tissue == 0] == 0).all()  # the padding says nothing


def test_one_tissue_is_not_modelled_as_three():
    """Tissues 1.2 SDs apart (a noisy procedural brain) are modelled; one tissue, or three 0.4 SDs
    apart, which a mixture would split anywhere, are not."""
    rng = np.random.default_rng(1)
    apart = np.concatenate([rng.normal(m, 8, 3000) for m in (50, 130, 200)])
    assert np.allclose(three_tissues(apart)[0], (50, 130, 200), atol=3)
    noisy = three_tissues(np.concatenate([rng.normal(m, 25, 3000) for m in (100, 130, 160)]))
    assert noisy is not None and np.all(np.diff(noisy[0]) > 15)
    assert three_tissues(rng.normal(130, 25, 9000)) is None
    assert three_tissues(np.concatenate([rng.normal(m, 25, 3000) for m in (120, 130, 140)])) is None
    assert three_tissues(apart[:100]) is None  # too few levels


def test_round_zero_twins_named_as_tissues_take_their_tissues():
    """Three twins in one brain box at p 0.6 everywhere, as a per-class network gives them: each
    class named as a tissue keeps its tissue and drops the others; unnamed, nothing moves."""
    image, tissue = brain(t1=True)
    names = {1: "Cerebrospinal fluid in brain MRI", 2: "Gray matter in brain MRI", 3: "White matter in brain MRI"}
    prompts = {k: ClassPrompts(BOX, [], [], [], text) for k, text in names.items()}
    brain_voxels = tissue > 0  # the padding around a skull-stripped brain keeps the network's 0.6
    for k, text in names.items():
        view = ClassView(k, prompts[k], BOX.bounds(), twins=tuple(p for j, p in prompts.items() if j != k))
        name = named_tissue(view)
        canvas = ClassCanvas(image.shape)
        canvas.lo, canvas.hi = np.zeros(3, int), np.array(image.shape)
        canvas.probs = torch.full(image.shape, 0.6)
        assert fuse_tissue(canvas, image, BOX, name, (1.0, 1.0, 1.0), np.ones(image.shape, bool))
        mask = (canvas.probs > 0.5).numpy()[brain_voxels]
        truth = tissue[brain_voxels] == k
        assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.8, text
    alone = ClassView(2, prompts[2], BOX.bounds(), twins=(ClassPrompts(BOX, [], [], [], "Left thalamus"),))
    assert named_tissue(alone) is None  # no other tissue named beside it: the rule stays out


def test_a_tissue_across_both_hemispheres_is_told_apart_from_each_hemisphere_s_tissues():
    """An aseg-like labelling: each hemisphere's cortex and white matter (twins), and the CSF of
    the whole brain, whose box is twice a hemisphere's and overlaps it at IoU 0.5 (no twin, no
    container): the CSF's text still meets the hemispheres' other tissues (alike_boxes).
    A small box inside the brain (a ventricle, its only content, also CSF) is no such companion."""
    image, _ = brain(t1=True)
    right, left, whole = Box(2, 37, 20, 2, 37, 2, 19), Box(2, 37, 20, 2, 37, 20, 37), Box(3, 36, 20, 3, 36, 3, 36)
    ventricle = Box(17, 22, 19, 17, 22, 15, 24)
    texts = [(right, "Right cerebral cortex"), (left, "Left cerebral cortex"), (right, "Right cerebral white matter"),
             (left, "Left cerebral white matter"), (whole, "Cerebrospinal fluid"), (ventricle, "CSF")]
    prompts = [ClassPrompts(box, [], [], [], f"{text} in brain MRI") for box, text in texts]
    views = class_views(Case("MR_x", image, np.ones(3), prompts, None, 0, True))
    csf = views[4]
    assert not csf.twins and len(csf.alike) == 4 and [p.text for p in csf.contents] == ["CSF in brain MRI"]
    assert named_tissue(csf) == CSF
    assert named_tissue(views[0]) == GREY  # beside its twin white matter, as before
    assert not views[5].alike  # 1 % of the brain box
    assert len(csf.companions) == 4  # the hemispheres' tissues have twins: a brain labelled by tissue


def test_a_large_cortex_parcel_is_no_companion_of_the_white_matter_around_the_parcels():
    """Cortex parcels over one white-matter class: a parcel whose box covers most of the brain's
    is alike the white matter's box, but neither has a twin, so the white matter's clicks are no
    twin's clicks in the parcel's refit (ClassView.companions)."""
    image, _ = brain(t1=True)
    brain_box, large = Box(3, 36, 20, 3, 36, 3, 36), Box(3, 36, 20, 0, 24, 0, 24)  # out of the white matter
    small = [Box(5, 12, 8, 5, 12, 5, 12), Box(25, 32, 28, 25, 32, 25, 32), Box(5, 12, 28, 25, 32, 5, 12)]
    prompts = [ClassPrompts(box, [], [], []) for box in (brain_box, large, *small)]
    views = class_views(Case("MR_x", image, np.ones(3), prompts, None, 0, True))
    assert views[1].alike and not views[1].twins and not views[1].companions
    assert not views[0].companions and len(views[0].contents) >= MIN_CONTENTS


def test_a_named_tissue_only_lowers_inside_the_boxes_of_unnamed_classes_it_holds():
    """Grey matter beside white matter claims its level, but not inside a deep nucleus's box: a
    nucleus of grey matter's level is the nucleus's."""
    image, tissue = brain(t1=True)
    nucleus = Box(17, 22, 19, 17, 22, 15, 24)
    image[17:23, 17:23, 15:25] = 130  # grey matter's level, in the white matter
    canvas = ClassCanvas(image.shape)
    canvas.lo, canvas.hi = np.zeros(3, int), np.array(image.shape)
    canvas.probs = torch.full(image.shape, 0.6)
    assert fuse_tissue(canvas, image, BOX, GREY, (1.0, 1.0, 1.0), np.ones(image.shape, bool), (nucleus,))
    probs = canvas.probs.numpy()
    assert probs[19, 19, 19] == np.float32(0.6)  # not raised in the nucleus's box
    assert np.median(probs[tissue == 2]) > 0.9  # raised in the ribbon


def test_the_rim_of_a_skull_stripped_brain_is_left_to_the_network():
    """Next to the padding a voxel mixes tissue with nothing, at CSF's level in T1, so no named
    tissue gains or loses there: the ICBM template's CSF took that rim (5.3 k voxels outside the
    brain at round 0)."""
    image, tissue = brain(t1=True)
    canvas = ClassCanvas(image.shape)
    canvas.lo, canvas.hi = np.zeros(3, int), np.array(image.shape)
    canvas.probs = torch.full(image.shape, 0.6)
    assert fuse_tissue(canvas, image, BOX, CSF, (1.0, 1.0, 1.0), np.ones(image.shape, bool))
    probs = canvas.probs.numpy()
    rim = (tissue == 1) & (np.arange(40)[None, None, :] == 3)  # the outer CSF, beside the padding
    assert rim.any() and (probs[rim] == np.float32(0.6)).all()
    assert np.median(probs[17:22, 17:22, 15:25]) > 0.9  # the ventricle, inside, gains
