"""Seeded fuzz of the reading layer (issue 10 items 1, 2, 7): one mutation of a valid case.

Rule under test: a failure while reading one member costs that member only. A mutation of
class j's box, clicks or clicks_order row leaves every other class's prompts, the spacing and
prev_pred read exactly as from the unmutated file; a mutation of a whole member (spacing,
prev_pred, clicks_order, imgs dtype, extra keys) leaves every class's box and clicks as they
were. Every warning is one line and numpy prints nothing. Most mutations are read in process
with load_case; a handful go through `python -m app` with the fallback engine, which must
write a valid file for each.
"""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from app.fallback import fallback_labels
from app.io import BOX_KEYS, LINE_LIMIT, CaseError, load_case
from tests.npzcase import REPO, SHAPE, box, image

MUTATIONS = 150
THROUGH_ENTRYPOINT = range(0, MUTATIONS, 25)  # 6 of them
BAD_VALUES = [np.inf, -np.inf, np.nan, "7", np.str_("x"), None, True, np.bool_(False), 1e300, -1e300, 2**70,
              3.7, np.float32(2.5), [1, 2], np.zeros((2, 2)), {"a": 1}, b"1", complex(1, 1), np.array(np.inf)]
BAD_ENTRIES = [None, "box", 5, 2.5, [1, 2, 3], np.zeros(7), np.zeros((2, 3)), {}, {"fg": 1}, np.array(5)]
BAD_POINTS = [["a", 1, 1], [1, 2], np.zeros((2, 3)), None, "xyz", [[1, 2, 3]], 3.5, [np.nan, 1, 1],
              [1, 1, np.inf], [1.5, 2.5, 3.5], [-1, 0, 0], [100, 0, 0], [2**70, 0, 0]]
BAD_ORDERS = [np.array(5), np.zeros((2, 2, 2)), np.array("fg"), np.array([1.5, 2.5]), np.array({"a": 1}),
              np.array(["fg"] * 9), np.array([[np.inf]]), np.array([[b"fg"]])]
BAD_PREV = [np.full(SHAPE, np.nan), np.full(SHAPE, -1, np.int16), np.ones((2, 2, 2), np.uint8), np.array(1),
            np.full(SHAPE, "a"), np.ones(SHAPE, bool), np.full(SHAPE, 99, np.uint8), np.full(SHAPE, 0.5),
            np.full(SHAPE, np.inf, np.float32)]
BAD_SPACING = [np.array([np.inf, 1, 1]), np.array([np.nan] * 3), np.array(["1", "1", "1"]), np.array(2.0),
               np.array([1.0, 2.0], dtype=object), np.ones((3, 3)), np.array([-1.0, 1, 1]), np.array([1e400] * 3)]


def _objects(items: list) -> np.ndarray:
    """A 1D object array, one item per element (lists and arrays stay whole)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def _valid_case(rng) -> tuple[dict, int]:
    """A random valid case: 1..4 classes, boxes or not, 0..3 click rounds."""
    k = int(rng.integers(1, 5))
    has_boxes = rng.random() < 0.7
    rounds = int(rng.integers(0 if has_boxes else 1, 4))
    arrays = {"imgs": image(), "spacing": np.array([0.8, 0.8, 2.5])}
    if has_boxes:
        boxes = []
        for _ in range(k):
            (z0, z1), (y0, y1), (x0, x1) = (np.sort(rng.integers(0, s, 2)) for s in SHAPE)
            boxes.append(box(z=(z0, z1), y=(y0, y1), x=(x0, x1)))
        arrays["boxes"] = _objects(boxes)
    if rounds:
        clicks, orders = [], []
        for _ in range(k):
            points, row = {"fg": [], "bg": []}, []
            for _ in range(rounds):
                kind = _pick(rng, ["fg", "bg", None])
                row.append(kind)
                if kind:
                    points[kind].append([int(rng.integers(s)) for s in SHAPE])
            clicks.append(points)
            orders.append(row)
        arrays["clicks"] = _objects(clicks)
        arrays["clicks_order"] = np.array(orders, dtype=object if any(None in row for row in orders) else None)
        arrays["prev_pred"] = rng.integers(0, k + 1, SHAPE).astype(np.uint8)
    return arrays, k


# --- mutations: each returns the class it touched (0-based) or the name of the member ---

def _box_value(rng, arrays, k):
    j = int(rng.integers(k))
    arrays["boxes"][j] = dict(arrays["boxes"][j]) | {_pick(rng, BOX_KEYS): _pick(rng, BAD_VALUES)}
    return j


def _box_keys(rng, arrays, k):
    j = int(rng.integers(k))
    raw = dict(arrays["boxes"][j])
    if rng.random() < 0.5:
        del raw[_pick(rng, BOX_KEYS)]
    else:
        raw["extra"] = _pick(rng, BAD_VALUES)
    arrays["boxes"][j] = raw
    return j


def _box_entry(rng, arrays, k):
    j = int(rng.integers(k))
    arrays["boxes"][j] = _pick(rng, BAD_ENTRIES)
    return j


def _click_coordinate(rng, arrays, k):
    j = int(rng.integers(k))
    raw = {kind: [list(p) for p in points] for kind, points in arrays["clicks"][j].items()}
    kind = "fg" if raw["fg"] else "bg"
    if not raw[kind]:
        raw[kind] = [[0, 0, 0]]
    raw[kind][-1][int(rng.integers(3))] = _pick(rng, BAD_VALUES)
    arrays["clicks"][j] = raw
    return j


def _click_point(rng, arrays, k):
    j = int(rng.integers(k))
    raw = dict(arrays["clicks"][j])
    raw["bg"] = [*raw["bg"], _pick(rng, BAD_POINTS)]
    arrays["clicks"][j] = raw
    return j


def _click_list(rng, arrays, k):
    j = int(rng.integers(k))
    arrays["clicks"][j] = dict(arrays["clicks"][j]) | {_pick(rng, ["fg", "bg"]): _pick(rng, BAD_ENTRIES)}
    return j


def _click_entry(rng, arrays, k):
    j = int(rng.integers(k))
    arrays["clicks"][j] = _pick(rng, BAD_ENTRIES)
    return j


def _order_row(rng, arrays, k):
    j = int(rng.integers(k))
    rows = [list(r) for r in arrays["clicks_order"]]
    rows[j] = _pick(rng, [5, None, "fgx", np.zeros((2, 2)), [["fg"]], [np.inf], ["xx", "fg"], np.array(3)])
    arrays["clicks_order"] = _objects(rows)
    return j


def _order_entry(rng, arrays, k):
    j = int(rng.integers(k))
    rows = [list(r) for r in arrays["clicks_order"]]
    rows[j][int(rng.integers(len(rows[j])))] = _pick(rng, [np.inf, 5, "zz", b"fg", ["fg"], np.zeros(2)])
    arrays["clicks_order"] = _objects(rows)
    return j


def _whole(member, values):
    def mutate(rng, arrays, k):
        arrays[member] = _pick(rng, values)
        return member
    return mutate


def _imgs_dtype(rng, arrays, k):
    img = arrays["imgs"].astype(np.float64)
    arrays["imgs"] = _pick(rng, [img / 255, img * 8 - 1000, np.where(img > 250, np.nan, img), img > 128,
                                 img.astype(np.int16), (img * 200).astype(np.uint16)])
    return "imgs"


def _extra_keys(rng, arrays, k):
    arrays["text_prompts"] = _pick(rng, BAD_ENTRIES)
    arrays["unknown"] = np.zeros(3)
    return "text_prompts"


PER_CLASS = {"boxes": [_box_value, _box_keys, _box_entry],
             "clicks": [_click_coordinate, _click_point, _click_list, _click_entry, _order_row, _order_entry]}
WHOLE = {"clicks": [_whole("clicks_order", BAD_ORDERS), _whole("prev_pred", BAD_PREV),
                    _whole("clicks", BAD_ENTRIES[1:])],
         "boxes": [_whole("boxes", BAD_ENTRIES[1:])],
         "imgs": [_whole("spacing", BAD_SPACING), _imgs_dtype, _extra_keys]}


def _mutated(seed: int) -> tuple[dict, dict, int, int | str]:
    """(valid arrays, mutated arrays, K, what the mutation touched) for one seed."""
    rng = np.random.default_rng([10, seed])
    arrays, k = _valid_case(rng)
    mutated = {name: value.copy() for name, value in arrays.items()}
    kinds = [m for table in (PER_CLASS, WHOLE) for member, ms in table.items() if member in arrays for m in ms]
    return arrays, mutated, k, _pick(rng, kinds)(rng, mutated, k)


def _read(path, capsys):
    """load_case with numpy warnings as errors; its stderr lines, each checked to be one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            case = load_case(path)
        except CaseError as e:
            case = e
    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith(f"{path.name}: warning: ") and len(line) <= LINE_LIMIT for line in lines), lines
    return case, lines


@pytest.mark.parametrize("seed", range(MUTATIONS))
def test_a_mutation_costs_only_what_it_touched(tmp_path, capsys, seed):
    arrays, mutated, k, touched = _mutated(seed)
    np.savez_compressed(tmp_path / "valid.npz", **arrays)
    np.savez_compressed(tmp_path / "fuzz.npz", **mutated)
    base, lines = _read(tmp_path / "valid.npz", capsys)
    assert lines == []
    case, _ = _read(tmp_path / "fuzz.npz", capsys)
    if isinstance(case, CaseError):  # only a whole boxes/clicks member can change K (a mismatch)
        assert touched in ("boxes", "clicks") and case.shape == SHAPE, case
        return

    assert case.image.dtype == np.uint8 and case.image.shape == SHAPE
    assert case.spacing.shape == (3,) and np.all(case.spacing > 0)
    assert case.prev_pred is None or (case.prev_pred.dtype == np.uint8 and case.prev_pred.max() <= case.num_classes)
    out = fallback_labels(case)
    assert out.dtype == np.uint8 and out.shape == SHAPE and out.max() <= case.num_classes
    if touched in ("boxes", "clicks"):
        return
    assert case.num_classes == k
    for c in range(k):
        same = (base.prompts[c].box, base.prompts[c].fg, base.prompts[c].bg)
        if c != touched:
            assert (case.prompts[c].box, case.prompts[c].fg, case.prompts[c].bg) == same, (touched, c)
            assert case.prompts[c].order == base.prompts[c].order or touched == "clicks_order"
    if touched != "spacing":
        np.testing.assert_array_equal(case.spacing, base.spacing)
    if touched not in ("prev_pred", "clicks_order"):
        assert (case.prev_pred is None) == (base.prev_pred is None)
        if case.prev_pred is not None:
            np.testing.assert_array_equal(case.prev_pred, base.prev_pred)


def test_fuzzed_cases_through_the_entrypoint(tmp_path):
    """A handful of the mutated files, all in one INPUT_DIR: `python -m app` runs each alone
    with the fallback engine, and each gets a valid file (or, for a K mismatch, zeros)."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for seed in THROUGH_ENTRYPOINT:
        np.savez_compressed(in_dir / f"fuzz{seed}.npz", **_mutated(seed)[1])
    env = {**os.environ, "INPUT_DIR": str(in_dir), "OUTPUT_DIR": str(out_dir), "SEGFM_ENGINE": "app.fallback:run",
           "SEGFM_DEADLINE_S": "60"}
    result = subprocess.run([sys.executable, "-m", "app"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "RuntimeWarning" not in result.stderr
    for seed in THROUGH_ENTRYPOINT:
        with np.load(out_dir / f"fuzz{seed}.npz") as npz:
            assert npz.files == ["segs"] and npz["segs"].dtype == np.uint8 and npz["segs"].shape == SHAPE
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"fuzz{seed}.npz" for seed in THROUGH_ENTRYPOINT)
