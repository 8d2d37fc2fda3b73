"""The procedural brains of harness.brains: touching parcels whose boxes overlap, as the engine's
parcel rules (ClassView.parcel) expect, labelled on the brain alone."""

import numpy as np

from app import engine
from app.io import Box, Case, ClassPrompts
from harness.brains import brain
from harness.official import boxes_from_labels


def test_brain_cases_are_parcels_of_one_mr_brain_that_the_engine_sees_as_parcels():
    for seed in (0, 1):
        case = brain(seed)
        assert case.name.startswith("MR_") and case.num_classes >= 6
        assert case.imgs.shape == case.gts.shape and case.spacing.tolist() == [1.3, 1.3, 1.5]
        boxes = [Box(int(b["z_min"]), int(b["z_max"]), int(b["z_mid"]), int(b["z_mid_y_min"]), int(b["z_mid_y_max"]),
                     int(b["z_mid_x_min"]), int(b["z_mid_x_max"])) for b in boxes_from_labels(case.gts)]
        views = engine.class_views(Case(case.name, case.imgs, np.ones(3), [ClassPrompts(b, [], [], []) for b in boxes],
                                        None, 0, True))
        parcels = [v.parcel for v in views]
        assert sum(parcels) >= len(parcels) // 2  # most boxes partly overlap a neighbour's
