"""The procedural head CT of harness.headct: the nesting the engine's lining rule is about."""

from harness.headct import head_ct
from tests.npzcase import organiser_views


def test_head_ct_has_soft_tissue_around_a_skull_whose_box_lines_the_head():
    case = head_ct(0)
    assert case.name.startswith("CT_") and case.num_classes == 2
    skull = case.gts == 2
    assert skull.sum() < (case.gts == 1).sum() and case.imgs[skull].min() >= 200  # bright, thinner
    views = organiser_views(case)
    assert [(v.holds_a_box, v.lining) for v in views] == [(True, False), (False, True)]
