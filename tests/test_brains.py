"""The procedural brains of harness.brains: touching parcels whose boxes overlap, as the engine's
parcel rules (ClassView.parcel) expect, labelled on the brain alone."""

from harness.brains import brain
from tests.npzcase import organiser_views


def test_brain_cases_are_parcels_of_one_mr_brain_that_the_engine_sees_as_parcels():
    for seed in (0, 1):
        case = brain(seed)
        assert case.name.startswith("MR_") and case.num_classes >= 6
        assert case.imgs.shape == case.gts.shape and case.spacing.tolist() == [1.3, 1.3, 1.5]
        views = organiser_views(case)
        parcels = [v for v in views if v.parcel]
        assert len(parcels) >= len(views) // 2  # most boxes partly overlap a neighbour's
        # together the parcels tile the brain, and each knows every parcel's box (engine.fuse_organ)
        assert all(v.organ == tuple(p.prompts.box for p in parcels) for v in parcels)


def test_tissue_brains_are_three_twins_in_one_brain_box():
    case = brain(0, tissues=True)
    assert case.name == "MR_brain0_tissues" and case.num_classes == 3
    views = organiser_views(case)
    assert all(len(v.twins) == 2 for v in views)  # CSF, grey and white matter share about one box
