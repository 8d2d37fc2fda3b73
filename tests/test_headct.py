"""The procedural head CT of harness.headct: the nesting the engine's lining rule is about."""

import numpy as np

from app import engine
from app.io import Box, Case, ClassPrompts
from harness.headct import head_ct
from harness.official import boxes_from_labels


def test_head_ct_has_soft_tissue_around_a_skull_whose_box_lines_the_head():
    case = head_ct(0)
    assert case.name.startswith("CT_") and case.num_classes == 2
    skull = case.gts == 2
    assert skull.sum() < (case.gts == 1).sum() and case.imgs[skull].min() >= 200  # bright, thinner
    boxes = [Box(int(b["z_min"]), int(b["z_max"]), int(b["z_mid"]), int(b["z_mid_y_min"]), int(b["z_mid_y_max"]),
                 int(b["z_mid_x_min"]), int(b["z_mid_x_max"])) for b in boxes_from_labels(case.gts)]
    views = engine.class_views(Case(case.name, case.imgs, np.ones(3), [ClassPrompts(b, [], [], []) for b in boxes],
                                    None, 0, True))
    assert [(v.holds_a_box, v.lining) for v in views] == [(True, False), (False, True)]
