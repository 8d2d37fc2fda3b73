"""The procedural brains of harness.brains: touching parcels whose boxes overlap, as the engine's
parcel rules (ClassView.parcel) expect, labelled on the brain alone."""

import numpy as np

from app.tissue import CSF, GREY, WHITE, tissue_of
from harness.brains import brain, icbm_aseg
from tests.npzcase import organiser_views


def test_brain_cases_are_parcels_of_one_mr_brain_that_the_engine_sees_as_parcels():
    for seed in (0, 1):
        case = brain(seed)
        assert case.name.startswith("MR_") and case.num_classes >= 6
        assert case.imgs.shape == case.gts.shape and case.spacing.tolist() == [1.3, 1.3, 1.5]
        views = organiser_views(case)
        parcels = [v for v in views if v.parcel]
        assert len(parcels) >= len(views) // 2  # most boxes partly overlap a neighbour's
        # together the parcels tile the brain, and each knows every parcel's box (fuse_organ)
        assert all(v.organ == tuple(p.prompts.box for p in parcels) for v in parcels)


def test_tissue_brains_are_three_twins_in_one_brain_box():
    case = brain(0, "tissues")
    assert case.name == "MR_brain0_tissues" and case.num_classes == 3
    views = organiser_views(case)
    assert all(len(v.twins) == 2 for v in views)  # CSF, grey and white matter share about one box
    assert [tissue_of(case.texts[k]) for k in (1, 2, 3)] == [CSF, GREY, WHITE]
    assert (case.imgs[case.gts == 1].mean() - case.imgs[case.gts == 2].mean()) * (
        case.imgs[case.gts == 3].mean() - case.imgs[case.gts == 2].mean()) < 0  # grey between, T1 or T2


def test_aseg_brains_hold_twins_a_container_of_nuclei_and_a_csf_box_around_all():
    case = brain(0, "aseg")
    assert case.name == "MR_brain0_aseg" and case.num_classes == 13
    views = organiser_views(case)
    cortex, white, csf = views[8:10], views[10:12], views[12]
    assert all(len(v.twins) >= 1 for v in (*cortex, *white))  # a hemisphere's cortex and white matter
    assert all(len(v.contents) >= 4 for v in white)  # each holds its side's nuclei
    assert csf.holds_a_box and len(csf.contents) >= 8
    tissues = [tissue_of(case.texts[k]) for k in range(1, 14)]  # named as the organisers would
    assert tissues == [None] * 8 + [GREY, GREY, WHITE, WHITE, CSF]


def test_the_real_template_labelled_by_tissue_and_hemisphere_relates_its_csf_to_both_hemispheres():
    case = icbm_aseg()
    assert case.num_classes == 5 and case.imgs.shape == case.gts.shape
    views = organiser_views(case)
    assert len(views[0].twins) == 1 and len(views[2].twins) == 1  # a hemisphere's cortex and white matter
    assert not views[4].twins and len(views[4].alike) == 4  # the CSF around both hemispheres
    assert [tissue_of(case.texts[k]) for k in range(1, 6)] == [GREY, GREY, WHITE, WHITE, CSF]


def test_a_finer_brain_is_a_head_of_the_same_size_on_a_finer_grid_with_its_own_noise():
    """--finer: about 1 mm, as the independent set's MR brains; rendered on that grid, not
    upsampled (an upsampled image's smoothed noise misled a click-rule study, harness/EXPERIMENTS.md)."""
    coarse, fine = brain(0, "tissues"), brain(0, "tissues", finer=1.5)
    assert fine.name == "MR_brain0_tissues_finer1.5" and fine.gts.shape == (144, 192, 168)
    extent = [np.array(case.gts.shape[::-1]) * case.spacing for case in (fine, coarse)]  # mm, (x, y, z)
    assert np.allclose(*extent)
    assert fine.num_classes == 3 and brain(0, "tissues", finer=1.0).name == coarse.name
