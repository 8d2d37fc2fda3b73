"""The click simulator (harness.official) on hand-made cases, and the inputs the loop writes."""

import numpy as np

from harness.loop import iteration_input, load_labelled
from harness.official import add_clicks, error_click


def cube(shape, lo, size) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, a + size) for a in lo)] = True
    return mask


def test_single_voxel_error_is_clicked_exactly():
    truth = cube((10, 10, 10), (2, 2, 2), 5)
    pred = truth.copy()
    pred[4, 3, 5] = False
    assert error_click(pred, truth) == ((4, 3, 5), True)


def test_click_lands_in_the_deepest_voxel_of_the_larger_component():
    truth = cube((20, 20, 20), (1, 1, 1), 2) | cube((20, 20, 20), (10, 10, 10), 5)
    assert error_click(np.zeros_like(truth), truth) == ((12, 12, 12), True)


def test_false_positive_gives_bg_and_missed_gives_fg():
    truth = cube((12, 12, 12), (3, 3, 3), 4)
    assert error_click(truth | cube((12, 12, 12), (0, 7, 7), 5), truth)[1] is False
    assert error_click(truth & ~cube((12, 12, 12), (3, 3, 3), 3), truth)[1] is True


def test_perfect_class_gets_none_and_an_unfixed_error_the_same_click_again():
    gts = np.zeros((10, 10, 10), np.uint8)
    gts[1:4, 1:4, 1:4] = 1
    gts[5:9, 5:9, 5:9] = 2
    segs = np.where(gts == 1, 1, 0).astype(np.uint8)  # class 1 perfect, class 2 missed
    clicks, order = [{"fg": [], "bg": []} for _ in range(2)], [[], []]
    add_clicks(segs, gts, clicks, order)
    add_clicks(segs, gts, clicks, order)  # nothing fixed: the same click again
    assert order == [[None, None], ["fg", "fg"]]
    assert clicks[0] == {"fg": [], "bg": []}
    assert clicks[1]["fg"][0] == clicks[1]["fg"][1]


def test_clicks_order_dtype_follows_the_organisers():
    case = load_labelled("tests/data/labelled/MR_PyRadiomics_breast1.npz")
    clicks = [{"fg": [[1, 2, 3]], "bg": []}]
    prev = np.zeros(case.imgs.shape, np.uint8)
    plain = iteration_input(case, None, clicks, [["fg"]], prev)["clicks_order"]
    with_none = iteration_input(case, None, clicks, [["fg", None]], prev)["clicks_order"]
    assert plain.dtype == np.dtype("<U2") and plain.shape == (1, 1)
    assert with_none.dtype == object and with_none.shape == (1, 2)
    assert "boxes" not in iteration_input(case, None, clicks, [["fg"]], prev)


def test_text_prompts_go_out_at_iteration_zero_only():
    """The organisers drop text_prompts after iteration 0 (challenge-contract.md)."""
    case = load_labelled("tests/data/labelled/MR_PyRadiomics_breast1.npz")
    case.texts = {1: "Breast lesion in MRI"}
    first = iteration_input(case, [{"z_min": 0}], None, None, None)
    assert first["text_prompts"].item() == {"1": "Breast lesion in MRI", "instance_label": 0}
    later = iteration_input(case, [{"z_min": 0}], [{"fg": [[1, 2, 3]], "bg": []}], [["fg"]],
                            np.zeros(case.imgs.shape, np.uint8))
    assert "text_prompts" not in later
