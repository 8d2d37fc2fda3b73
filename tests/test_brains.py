"""The procedural brains of harness.brains: touching parcels whose boxes overlap, as the engine's
parcel rules (ClassView.parcel) expect, labelled on the brain alone."""

from harness.brains import brain
from tests.npzcase import organiser_views


def test_brain_cases_are_parcels_of_one_mr_brain_that_the_engine_sees_as_parcels():
    for seed in (0, 1):
        case = brain(seed)
        assert case.name.startswith("MR_") and case.num_classes >= 6
        assert case.imgs.shape == case.gts.shape and case.spacing.tolist() == [1.3, 1.3, 1.5]
        parcels = [v.parcel for v in organiser_views(case)]
        assert sum(parcels) >= len(parcels) // 2  # most boxes partly overlap a neighbour's
