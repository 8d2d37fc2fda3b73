"""Small synthetic challenge files for the contract tests (built in tmp_path)."""

from pathlib import Path

import numpy as np

SHAPE = (8, 16, 12)
REPO = Path(__file__).parents[1]
AMOS = REPO.parent / "shared/samples/inputs/CT_AMOS_amos_0018.npz"


def box(z=(1, 4), y=(2, 9), x=(3, 7), z_mid=None) -> dict:
    """A box dict exactly as the organisers store it (np.int64 values, their key order)."""
    values = (z[0], z[1], (z[0] + z[1]) // 2 if z_mid is None else z_mid, x[0], y[0], x[1], y[1])
    keys = ("z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")
    return {k: np.int64(v) for k, v in zip(keys, values, strict=True)}


def objects(items: list) -> np.ndarray:
    """A 1D object array, as np.savez stores a list of dicts or ragged lists."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def image(shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def write(path: Path, **arrays) -> Path:
    """imgs and spacing default to a small valid image; pass a key as None to leave it out."""
    arrays = {"imgs": image(), "spacing": np.array([0.8, 0.8, 2.5])} | arrays
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def organiser_views(case) -> list:
    """The engine's class views of a labelled case (harness.loop.LabelledCase) with the
    organisers' boxes from its labels, before any click: which rules (parcel, lining) apply."""
    from app.io import Box, Case, ClassPrompts
    from app.views import class_views
    from harness.official import boxes_from_labels

    boxes = [Box(int(b["z_min"]), int(b["z_max"]), int(b["z_mid"]), int(b["z_mid_y_min"]), int(b["z_mid_y_max"]),
                 int(b["z_mid_x_min"]), int(b["z_mid_x_max"])) for b in boxes_from_labels(case.gts)]
    return class_views(Case(case.name, case.imgs, np.ones(3), [ClassPrompts(b, [], [], []) for b in boxes],
                            None, 0, True))
