"""Fallback painting: prev_pred first, then box cuboids (largest first), only into free voxels."""

import numpy as np

from app.fallback import fallback_labels
from app.io import Box, Case, ClassPrompts

SHAPE = (6, 10, 10)


def _case(boxes, prev_pred=None) -> Case:
    prompts = [ClassPrompts(box=b, fg=[], bg=[], order=[]) for b in boxes]
    return Case(name="f.npz", image=np.zeros(SHAPE, np.uint8), spacing=np.ones(3), prompts=prompts,
                prev_pred=prev_pred, iteration=0 if prev_pred is None else 1, has_boxes=True)


BIG = Box(z_min=0, z_max=5, z_mid=2, y_min=0, y_max=9, x_min=0, x_max=9)
SMALL = Box(z_min=2, z_max=3, z_mid=2, y_min=4, y_max=5, x_min=4, x_max=5)


def test_small_box_inside_big_box_stays_visible():
    for order in ([BIG, SMALL], [SMALL, BIG]):
        out = fallback_labels(_case(order))
        small_label = order.index(SMALL) + 1
        assert out.dtype == np.uint8 and out.shape == SHAPE
        assert (out[SMALL.slices()] == small_label).all()
        assert (out == small_label).sum() == 8 and (out == 3 - small_label).sum() == 600 - 8


def test_prev_pred_wins_over_box_and_unknown_labels_are_ignored():
    prev = np.zeros(SHAPE, np.uint8)
    prev[0, 0, :3] = 1
    prev[5, 9, 9] = 9  # no class 9: ignored
    out = fallback_labels(_case([BIG, SMALL], prev))
    assert (out == 1).sum() == 3  # class 1 from prev_pred, not its big box
    assert (out[SMALL.slices()] == 2).all() and (out == 2).sum() == 8
    assert out[5, 9, 9] == 0


def test_base_is_kept_and_not_modified():
    base = np.zeros(SHAPE, np.uint8)
    base[2, 4, 4] = 1  # the engine's class 1 voxel, inside the small box
    out = fallback_labels(_case([BIG, SMALL]), base=base, skip={1})
    assert out[2, 4, 4] == 1 and (out == 1).sum() == 1  # class 1 finished: no box painted
    assert (out == 2).sum() == 7  # class 2 box fills around the engine's voxel
    assert base.sum() == 1


def test_skip_everything_returns_base_copy():
    base = np.ones(SHAPE, np.uint8)
    out = fallback_labels(_case([BIG]), base=base, skip={1})
    assert out is not base and (out == 1).all()


def test_no_box_no_prev_paints_nothing():
    assert not fallback_labels(_case([None, None], np.zeros(SHAPE, np.uint8))).any()
