"""The challenge I/O contract: every iteration kind, every clicks_order form, every bad-input row."""

import warnings

import numpy as np
import pytest

from app.io import LINE_LIMIT, Box, CaseError, ClassPrompts, load_case, to_uint8, write_segs
from tests.npzcase import AMOS, REPO, SHAPE, box, image, objects, write

DATA = REPO / "tests/data"


def test_box_iteration_fixture():
    case = load_case(DATA / "inputs/MR_ICBM152_tissue.npz")
    assert (case.name, case.num_classes, case.iteration, case.has_boxes) == ("MR_ICBM152_tissue.npz", 3, 0, True)
    assert case.image.dtype == np.uint8 and case.image.shape == (95, 117, 99)
    assert case.prev_pred is None
    # stored {z_min 1, z_max 76, z_mid 37, x 14..84, y 14..103}
    assert case.prompts[0].box == Box(z_min=1, z_max=76, z_mid=37, y_min=14, y_max=103, x_min=14, x_max=84)
    assert all(p.newest_click is None and not p.has_new_click for p in case.prompts)


def test_click_iteration_fixture():
    case = load_case(DATA / "inputs_iter/MR_ICBM152_tissue.npz")
    assert (case.num_classes, case.iteration, case.has_boxes) == (3, 1, True)
    assert case.prev_pred.dtype == np.uint8 and case.prev_pred.shape == case.image.shape
    assert case.prompts[0].fg == [(33, 98, 46)] and case.prompts[0].order == ["fg"]
    assert case.prompts[0].newest_click == ((33, 98, 46), True) and case.prompts[0].has_new_click


@pytest.mark.skipif(not AMOS.exists(), reason="real challenge sample not present (../shared)")
def test_real_amos_sample():
    case = load_case(AMOS)
    assert case.image.shape == (63, 512, 512) and case.num_classes == 15 and case.iteration == 0
    np.testing.assert_allclose(case.spacing, [5.0, 0.846, 0.846], atol=1e-6)  # stored (x, y, z)
    assert case.prompts[0].box == Box(z_min=32, z_max=50, z_mid=41, y_min=189, y_max=313, x_min=329, x_max=416)
    assert case.prompts[4].box.z_mid == 54  # median voxel slice, not the middle of 48..62


def test_spacing_is_reversed_once(tmp_path):
    case = load_case(write(tmp_path / "a.npz", spacing=np.array([0.7, 0.8, 3.0])))
    np.testing.assert_array_equal(case.spacing, [3.0, 0.8, 0.7])
    assert case.spacing.dtype == np.float64


def test_box_slices_are_inclusive():
    b = Box(z_min=1, z_max=3, z_mid=2, y_min=0, y_max=4, x_min=2, x_max=2)
    assert np.zeros(SHAPE)[b.slices()].shape == (3, 5, 1)


def test_click_iteration_with_boxes(tmp_path):
    clicks = objects([{"fg": [[1, 2, 3]], "bg": [[2, 3, 4]]}, {"fg": [[3, 4, 5]], "bg": []}])
    order = np.array([["fg", "bg"], ["fg", None]], dtype=object)
    prev = np.zeros(SHAPE, np.uint8)
    prev[2:4, 3:8, 4:6] = 2
    case = load_case(write(tmp_path / "c.npz", boxes=objects([box(), box()]), clicks=clicks,
                           clicks_order=order, prev_pred=prev))
    assert case.iteration == 2 and case.has_boxes
    first, second = case.prompts
    assert first.newest_click == ((2, 3, 4), False) and first.has_new_click
    assert second.newest_click == ((3, 4, 5), True) and not second.has_new_click
    np.testing.assert_array_equal(case.prev_pred, prev)


def test_no_box_first_run(tmp_path):
    """No-box cases skip iteration 0: zero prev_pred, one fg click per class."""
    clicks = objects([{"fg": [[1, 1, 1]], "bg": []}, {"fg": [[5, 9, 9]], "bg": []}])
    case = load_case(write(tmp_path / "n.npz", clicks=clicks, clicks_order=np.array([["fg"], ["fg"]]),
                           prev_pred=np.zeros(SHAPE, np.uint8)))
    assert (case.num_classes, case.iteration, case.has_boxes) == (2, 1, False)
    assert all(p.box is None and p.has_new_click for p in case.prompts)
    assert case.prompts[1].newest_click == ((5, 9, 9), True)
    assert not case.prev_pred.any()


ORDER_FORMS = {
    "U2": np.array([["fg", "bg"], ["bg", "fg"]]),
    "object_with_none": np.array([["fg", "bg"], [None, "fg"]], dtype=object),
    "ragged_object": objects([["fg", "bg"], ["fg"]]),
}
EXPECTED_ORDERS = {
    "U2": [["fg", "bg"], ["bg", "fg"]],
    "object_with_none": [["fg", "bg"], [None, "fg"]],
    "ragged_object": [["fg", "bg"], ["fg"]],
}


@pytest.mark.parametrize("form", ORDER_FORMS)
def test_clicks_order_forms(tmp_path, form):
    clicks = objects([{"fg": [[1, 1, 1]], "bg": [[2, 2, 2]]}, {"fg": [[3, 3, 3]], "bg": [[4, 4, 4]]}])
    case = load_case(write(tmp_path / "o.npz", clicks=clicks, clicks_order=ORDER_FORMS[form],
                           prev_pred=np.zeros(SHAPE, np.uint8)))
    assert [p.order for p in case.prompts] == EXPECTED_ORDERS[form]
    assert case.iteration == 2


def test_clicks_order_0d_list(tmp_path):
    """A ragged list of lists pickled as a single object."""
    order = np.empty((), dtype=object)
    order[()] = [["fg", "bg"], ["fg"]]
    clicks = objects([{"fg": [[1, 1, 1]], "bg": [[2, 2, 2]]}, {"fg": [[3, 3, 3]], "bg": []}])
    case = load_case(write(tmp_path / "o.npz", clicks=clicks, clicks_order=order))
    assert [p.order for p in case.prompts] == [["fg", "bg"], ["fg"]]


def test_newest_click_rules():
    p = ClassPrompts(box=None, fg=[(1, 1, 1), (2, 2, 2)], bg=[(3, 3, 3)], order=["fg", "bg", "fg", None])
    assert p.newest_click == ((2, 2, 2), True) and not p.has_new_click
    assert ClassPrompts(None, fg=[], bg=[(3, 3, 3)], order=[]).newest_click == ((3, 3, 3), False)
    assert ClassPrompts(None, fg=[], bg=[], order=[None]).newest_click is None


def test_hundred_classes(tmp_path):
    k = 100
    shape = (4, 40, 40)
    boxes = objects([box(z=(0, 3), y=(c // 10 * 4, c // 10 * 4 + 3), x=(c % 10 * 4, c % 10 * 4 + 3))
                     for c in range(k)])
    clicks = objects([{"fg": [[1, c // 10 * 4 + 1, c % 10 * 4 + 1]], "bg": []} for c in range(k)])
    case = load_case(write(tmp_path / "k.npz", imgs=image(shape), boxes=boxes, clicks=clicks,
                           clicks_order=np.full((k, 1), "fg"), prev_pred=np.zeros(shape, np.uint8)))
    assert case.num_classes == k and case.iteration == 1
    assert case.prompts[99].box == Box(z_min=0, z_max=3, z_mid=1, y_min=36, y_max=39, x_min=36, x_max=39)
    assert case.prompts[99].fg == [(1, 37, 37)]


def test_no_prompts_is_zero_classes(tmp_path):
    case = load_case(write(tmp_path / "e.npz"))
    assert case.num_classes == 0 and case.iteration == 0 and not case.has_boxes


# --- fatal problems: CaseError, with the shape when the image was read ---

def _corrupt(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"this is not a zip archive" * 10)
    return path


def _truncated(tmp_path):
    path = write(tmp_path / "x.npz", imgs=image((20, 64, 64)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _bare_npy(tmp_path):
    path = tmp_path / "x.npz"
    with open(path, "wb") as f:
        np.save(f, image())
    return path


FATAL = {
    "missing file": (lambda t: t / "absent.npz", None, "not found"),
    "corrupt file": (_corrupt, None, "not a readable npz"),
    "truncated file": (_truncated, None, "npz"),
    "bare npy": (_bare_npy, None, "not an npz archive"),
    "no imgs": (lambda t: write(t / "x.npz", imgs=None, boxes=objects([box()])), None, "no 'imgs'"),
    "text imgs": (lambda t: write(t / "x.npz", imgs=np.full(SHAPE, "a")), SHAPE, "not numeric"),
    "2D imgs": (lambda t: write(t / "x.npz", imgs=image()[0]), None, "3D"),
    "4D imgs": (lambda t: write(t / "x.npz", imgs=image()[None]), None, "3D"),
    "K mismatch": (lambda t: write(t / "x.npz", boxes=objects([box(), box()]),
                                   clicks=objects([{"fg": [[1, 1, 1]], "bg": []}]),
                                   clicks_order=np.array([["fg"]])), SHAPE, "2 boxes but 1 click"),
    "K > 255": (lambda t: write(t / "x.npz", boxes=objects([box()] * 256)), SHAPE, "256 classes"),
}


def test_255_classes_are_fine(tmp_path):
    assert load_case(write(tmp_path / "x.npz", boxes=objects([box()] * 255))).num_classes == 255


@pytest.mark.parametrize("row", FATAL)
def test_fatal_problems(tmp_path, row):
    make, shape, message = FATAL[row]
    with pytest.raises(CaseError, match=message) as info:
        load_case(make(tmp_path))
    assert info.value.shape == shape
    assert "\n" not in str(info.value)


# --- local problems: repaired or dropped, with one warning line ---

@pytest.mark.parametrize("spacing", [None, np.array([1.0, 2.0]), np.array([1.0, 0.0, 2.0]),
                                     np.array([1.0, np.nan, 2.0]), np.array("2 mm")])
def test_bad_spacing_defaults_to_1mm(tmp_path, capsys, spacing):
    case = load_case(write(tmp_path / "s.npz", spacing=spacing))
    np.testing.assert_array_equal(case.spacing, [1.0, 1.0, 1.0])
    assert "spacing" in capsys.readouterr().err


@pytest.mark.parametrize(("raw", "expected", "message"), [
    (box(z=(-2, 3), y=(5, 30), x=(0, 4)), Box(0, 3, 0, 5, 15, 0, 4), "clipped"),
    (box(z=(9, 12)), None, "outside"),
    (box(y=(-9, -1)), None, "outside"),
    (box(x=(6, 2)), None, "x_min 6 > x_max 2"),
    (box(z=(4, 1)), None, "z_min 4 > z_max 1"),
    (box(z=(1, 4), z_mid=7), Box(1, 4, 4, 2, 9, 3, 7), "z_mid"),
    ({"z_min": 1}, None, "not a dict with keys"),
    ("box", None, "not a dict"),
])
def test_bad_box_is_clipped_or_dropped(tmp_path, capsys, raw, expected, message):
    case = load_case(write(tmp_path / "b.npz", boxes=objects([raw, box()])))
    assert case.prompts[0].box == expected
    assert case.prompts[1].box == Box(1, 4, 2, 2, 9, 3, 7)  # the other class is untouched
    assert message in capsys.readouterr().err


def test_bad_clicks_are_dropped(tmp_path, capsys):
    clicks = objects([{"fg": [[1, 1, 1], [8, 0, 0], [0, -1, 0]], "bg": [[1, 2], [2, 2, 2]]}])
    case = load_case(write(tmp_path / "k.npz", clicks=clicks, clicks_order=np.array([["fg", "bg", "fg"]])))
    assert case.prompts[0].fg == [(1, 1, 1)] and case.prompts[0].bg == [(2, 2, 2)]
    err = capsys.readouterr().err
    assert err.count("outside the image") == 2 and "is not [z, y, x]" in err


def test_clicks_order_with_wrong_rows_is_ignored(tmp_path, capsys):
    clicks = objects([{"fg": [[1, 1, 1]], "bg": []}, {"fg": [[2, 2, 2]], "bg": []}])
    case = load_case(write(tmp_path / "k.npz", clicks=clicks, clicks_order=np.array([["fg"], ["fg"], ["fg"]])))
    assert [p.order for p in case.prompts] == [[], []]
    assert case.iteration == 1 and case.prompts[1].newest_click == ((2, 2, 2), True)
    assert "clicks_order has 3 rows for 2 classes" in capsys.readouterr().err


@pytest.mark.parametrize(("prev", "expected_max", "message"), [
    (np.ones((3, 3, 3), np.uint8), 0, "shape"),
    (np.ones(SHAPE, np.int64), 1, "cast to uint8"),
    (np.full(SHAPE, 0.5), 0, "does not hold uint8 labels"),
    (np.full(SHAPE, 7, np.uint8), 0, "labels > 2 cleared"),
])
def test_bad_prev_pred(tmp_path, capsys, prev, expected_max, message):
    clicks = objects([{"fg": [[1, 1, 1]], "bg": []}, {"fg": [[2, 2, 2]], "bg": []}])
    case = load_case(write(tmp_path / "p.npz", clicks=clicks, clicks_order=np.array([["fg"], ["fg"]]),
                           prev_pred=prev))
    assert case.prev_pred.dtype == np.uint8 and case.prev_pred.shape == SHAPE
    assert case.prev_pred.max() == expected_max
    assert message in capsys.readouterr().err


def test_inf_box_or_click_costs_only_itself(tmp_path, capsys):
    """Issue 10 item 1: int(inf) raises OverflowError; it must cost that box or click only, not
    the other classes' prompts or prev_pred."""
    bad_box = box() | {"z_max": np.float64(np.inf)}
    clicks = objects([{"fg": [[1, 1, 1], [np.inf, 2, 2]], "bg": []}, {"fg": [[3, 3, 3]], "bg": [[4, 4, 4]]}])
    prev = np.zeros(SHAPE, np.uint8)
    prev[1, 1, 1] = 2
    case = load_case(write(tmp_path / "i.npz", boxes=objects([bad_box, box()]), clicks=clicks,
                           clicks_order=np.array([["fg", "fg"], ["fg", "bg"]]), prev_pred=prev))
    assert case.prompts[0].box is None and case.prompts[1].box == Box(1, 4, 2, 2, 9, 3, 7)
    assert case.prompts[0].fg == [(1, 1, 1)]
    assert (case.prompts[1].fg, case.prompts[1].bg) == ([(3, 3, 3)], [(4, 4, 4)])
    np.testing.assert_array_equal(case.prev_pred, prev)
    err = capsys.readouterr().err
    assert err.count("warning") == 2 and "class 1 box" in err and "class 1 fg click" in err


@pytest.mark.parametrize("order", [np.array(5), np.zeros((2, 2, 2)), np.array("fg")], ids=["0-d", "3-D", "0-d str"])
def test_unusable_clicks_order_costs_only_itself(tmp_path, capsys, order):
    """Issue 10 item 2: a 0-d or 3-D clicks_order is ignored with one warning; boxes, clicks and
    prev_pred are kept."""
    clicks = objects([{"fg": [[1, 1, 1]], "bg": []}, {"fg": [], "bg": [[2, 2, 2]]}])
    prev = np.ones(SHAPE, np.uint8)
    case = load_case(write(tmp_path / "o.npz", boxes=objects([box(), box()]), clicks=clicks,
                           clicks_order=order, prev_pred=prev))
    assert [p.order for p in case.prompts] == [[], []]
    assert case.prompts[0].fg == [(1, 1, 1)] and case.prompts[1].bg == [(2, 2, 2)]
    assert all(p.box == Box(1, 4, 2, 2, 9, 3, 7) for p in case.prompts)
    np.testing.assert_array_equal(case.prev_pred, prev)
    err = capsys.readouterr().err
    assert "clicks_order" in err and "is not one row per class: ignored" in err


def test_one_bad_clicks_order_row_costs_only_that_class(tmp_path, capsys):
    clicks = objects([{"fg": [[1, 1, 1]], "bg": []}, {"fg": [[2, 2, 2]], "bg": []}, {"fg": [[3, 3, 3]], "bg": []}])
    order = objects([["fg"], np.zeros((2, 2)), ["fg"]])
    case = load_case(write(tmp_path / "o.npz", clicks=clicks, clicks_order=order))
    assert [p.order for p in case.prompts] == [["fg"], [], ["fg"]]
    assert "clicks_order row of class 2" in capsys.readouterr().err


def test_float_coordinates_are_rounded_with_a_warning_each(tmp_path, capsys):
    """Issue 10 item 7: float box and click coordinates are rounded, one warning per repair."""
    float_box = {k: float(v) for k, v in box().items()} | {"z_mid_y_max": 8.6}
    clicks = objects([{"fg": [[1.0, 2.4, 3.0], [2, 2, 2]], "bg": np.array([[3.0, 3.0, 3.6]])}])
    case = load_case(write(tmp_path / "f.npz", boxes=objects([float_box]), clicks=clicks,
                           clicks_order=np.array([["fg", "bg", "fg"]]), prev_pred=np.zeros(SHAPE, np.uint8)))
    assert case.prompts[0].box == Box(1, 4, 2, 2, 9, 3, 7)
    assert case.prompts[0].fg == [(1, 2, 3), (2, 2, 2)] and case.prompts[0].bg == [(3, 3, 4)]
    err = capsys.readouterr().err
    assert err.count("rounded") == 3 and err.count("\n") == 3


@pytest.mark.parametrize("value", ["5", np.str_("5"), True, None, [1, 2], np.nan, -np.inf])
def test_box_values_that_are_not_finite_numbers_are_refused(tmp_path, capsys, value):
    """Issue 10 item 7: int('5') or int(True) no longer accepts a box silently."""
    case = load_case(write(tmp_path / "s.npz", boxes=objects([box() | {"z_mid": value}, box()])))
    assert case.prompts[0].box is None and case.prompts[1].box is not None
    assert capsys.readouterr().err.count("not finite numbers") == 1


@pytest.mark.parametrize("point", [["1", 1, 1], [True, 1, 1], [1, 1], [[1, 1], 1], [1, 1, 1, 1], "abc", None])
def test_malformed_click_is_dropped(tmp_path, capsys, point):
    clicks = objects([{"fg": [point, [2, 2, 2]], "bg": []}])
    case = load_case(write(tmp_path / "c.npz", clicks=clicks, clicks_order=np.array([["fg", "fg"]]),
                           prev_pred=np.zeros(SHAPE, np.uint8)))
    assert case.prompts[0].fg == [(2, 2, 2)]
    assert capsys.readouterr().err.count("dropped") == 1


def test_nan_prev_pred_is_ignored_without_numpy_noise(tmp_path, capsys):
    """Issue 10 item 7: the check runs before any cast, so numpy prints no RuntimeWarning."""
    prev = np.ones(SHAPE)
    prev[0, 0, 0] = np.nan
    clicks = objects([{"fg": [[1, 1, 1]], "bg": []}])
    path = write(tmp_path / "p.npz", clicks=clicks, clicks_order=np.array([["fg"]]), prev_pred=prev)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        case = load_case(path)
    assert not case.prev_pred.any()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not hold uint8 labels" in err


def test_a_huge_value_in_a_message_stays_one_short_line(tmp_path, capsys):
    clicks = objects([{"fg": [np.zeros((50, 50))], "bg": []}])
    load_case(write(tmp_path / "h.npz", clicks=clicks, clicks_order=np.array([["fg"]]),
                    prev_pred=np.zeros(SHAPE, np.uint8)))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) <= LINE_LIMIT + 1


# --- imgs conversion (issue 10 item 8): one rule, shared with training ---

@pytest.mark.parametrize("dtype", [np.int16, np.int64, np.float32, np.float64, np.uint16])
def test_to_uint8_casts_whole_values_in_range(dtype):
    img = image()
    out, note = to_uint8(img.astype(dtype))
    assert out.dtype == np.uint8 and np.array_equal(out, img) and "cast" in note


def test_to_uint8_leaves_uint8_alone():
    img = image()
    out, note = to_uint8(img)
    assert out is img and note is None


def test_to_uint8_windows_other_values_on_nonzero_percentiles():
    """CT in HU (negative values) and normalised floats in 0..1 are scaled from the 0.5/99.5
    percentiles of the nonzero voxels: monotonic, the full 0..255 range, outliers clipped."""
    rng = np.random.default_rng(1)
    hu = rng.integers(-1000, 1500, SHAPE).astype(np.int16)
    hu[0, 0, 0], hu[0, 0, 1] = -30000, 30000  # outliers beyond the window
    out, note = to_uint8(hu)
    lo, hi = np.percentile(hu[hu != 0], [0.5, 99.5])
    assert "percentile" in note and out.min() == 0 and out.max() == 255
    assert out[0, 0, 0] == 0 and out[0, 0, 1] == 255
    order = np.argsort(hu, axis=None, kind="stable")
    assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()  # monotonic
    inside = (hu > lo) & (hu < hi)
    np.testing.assert_allclose(out[inside], (hu[inside] - lo) / (hi - lo) * 255, atol=0.51)
    unit, _ = to_uint8(image().astype(np.float64) / 255.0)  # 0..1 floats are not cast to 0/1
    assert len(np.unique(unit)) > 200


def test_to_uint8_zeroes_non_finite_voxels_quietly():
    img = image().astype(np.float32) / 7
    img[0, 0, :3] = [np.nan, np.inf, -np.inf]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, note = to_uint8(img)
    assert (out[0, 0, :3] == 0).all() and "non-finite" in note and out.max() == 255


@pytest.mark.parametrize(("img", "expected"), [(np.zeros(SHAPE, np.float32), 0), (np.full(SHAPE, np.nan), 0),
                                               (np.full(SHAPE, 1000, np.int32), 255)])
def test_to_uint8_degenerate_images(img, expected):
    out, _ = to_uint8(img)
    assert out.dtype == np.uint8 and out.shape == SHAPE and (out == expected).all()


def test_to_uint8_refuses_non_numeric():
    with pytest.raises(TypeError, match="not numeric"):
        to_uint8(np.full(SHAPE, "a"))


def test_float_imgs_are_converted_with_one_warning(tmp_path, capsys):
    case = load_case(write(tmp_path / "f.npz", imgs=image().astype(np.float32) * 4.0 - 7, boxes=objects([box()])))
    assert case.image.dtype == np.uint8 and case.image.max() == 255 and case.num_classes == 1
    assert capsys.readouterr().err.count("'imgs' is float32") == 1


def test_text_prompts_name_their_classes_and_a_bad_one_costs_only_the_texts(tmp_path, capsys):
    prompts = np.array({"1": "liver", "2": 7, "instance_label": 0}, dtype=object)
    case = load_case(write(tmp_path / "t.npz", boxes=objects([box(), box(), box()]), text_prompts=prompts))
    assert [p.text for p in case.prompts] == ["liver", "", ""]  # a number is no text; class 3 has none
    case = load_case(write(tmp_path / "b.npz", boxes=objects([box()]), text_prompts=np.array(["liver"])))
    assert case.num_classes == 1 and case.prompts[0].box is not None and case.prompts[0].text == ""
    assert "text_prompts unreadable" in capsys.readouterr().err


def test_write_segs_atomic_roundtrip(tmp_path):
    path = tmp_path / "out.npz"
    path.write_bytes(b"stale")
    segs = np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(np.uint8)
    write_segs(path, segs)
    with np.load(path) as npz:
        assert npz.files == ["segs"]
        np.testing.assert_array_equal(npz["segs"], segs)
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]  # no temp file left


@pytest.mark.parametrize("segs", [np.zeros(SHAPE, np.int64), np.zeros(SHAPE[:2], np.uint8)])
def test_write_segs_rejects_non_uint8_3d(tmp_path, segs):
    with pytest.raises(AssertionError):
        write_segs(tmp_path / "out.npz", segs)
