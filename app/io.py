"""The challenge I/O contract: load and validate one case, write one prediction.

Everything that knows the npz layout lives here (see ../shared/docs/challenge-contract.md),
so the engine sees only a validated `Case` in array order (z, y, x). Problems are handled
by the rule "never silently wrong": a fatal problem raises `CaseError` (one line for
stderr, with the image shape when it is known so the caller can still write a valid
file); a local problem (one bad box, one bad click, a bad spacing or prev_pred) is
repaired or dropped with a one-line warning on stderr, so one bad prompt does not cost
the whole case.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BOX_KEYS = ("z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")


class CaseError(Exception):
    """A case that cannot be processed. str() is one line for stderr; `shape` is the image
    shape when the image was read (a valid all-zero output can then still be written)."""

    def __init__(self, message: str, shape: tuple[int, ...] | None = None):
        super().__init__(message)
        self.shape = shape


@dataclass(frozen=True)
class Box:
    """Inclusive voxel bounds in array axes (z=0, y=1, x=2): the 2D box drawn on slice
    z_mid, plus the z extent of the object."""

    z_min: int
    z_max: int
    z_mid: int
    y_min: int
    y_max: int
    x_min: int
    x_max: int

    def slices(self) -> tuple[slice, slice, slice]:
        """The box extruded over z_min..z_max, as a half-open cuboid for indexing."""
        return (
            slice(self.z_min, self.z_max + 1),
            slice(self.y_min, self.y_max + 1),
            slice(self.x_min, self.x_max + 1),
        )


@dataclass
class ClassPrompts:
    """The prompts of one class; class index c (0-based) is output label c + 1."""

    box: Box | None
    fg: list[tuple[int, int, int]]
    bg: list[tuple[int, int, int]]
    order: list[str | None]

    @property
    def newest_click(self) -> tuple[tuple[int, int, int], bool] | None:
        """(zyx, is_fg) of the most recent click, or None if there is none.

        The last non-None entry of `order` names the list; its last element is the click.
        Without a usable order (missing clicks_order) the last fg click wins, else the last bg.
        """
        kind = next((k for k in reversed(self.order) if k is not None), None)
        if kind is None:
            kind = "fg" if self.fg else "bg"
        clicks = self.fg if kind == "fg" else self.bg
        return (clicks[-1], kind == "fg") if clicks else None

    @property
    def has_new_click(self) -> bool:
        """A click was added to this class in the latest round."""
        return bool(self.order) and self.order[-1] is not None


@dataclass
class Case:
    """One validated input file, in array order (z, y, x)."""

    name: str
    image: np.ndarray
    spacing: np.ndarray
    prompts: list[ClassPrompts]
    prev_pred: np.ndarray | None
    iteration: int
    has_boxes: bool

    @property
    def num_classes(self) -> int:
        return len(self.prompts)


def warn(name: str, message: str) -> None:
    print(f"{name}: warning: {message}", file=sys.stderr, flush=True)


def load_case(path: str | os.PathLike) -> Case:
    """Read and validate one challenge npz. Raises CaseError for fatal problems."""
    path = Path(path)
    name = path.name
    data = _read_arrays(path)
    image = _image(name, data)
    shape = image.shape
    try:
        return _build_case(name, data, image)
    except CaseError:
        raise
    except Exception as e:  # a malformed member nobody anticipated: keep the shape for the output
        raise CaseError(f"{name}: unreadable prompts ({type(e).__name__}: {e})", shape) from e


def write_segs(path: str | os.PathLike, segs: np.ndarray) -> None:
    """Write `segs` atomically: a temp file in the same folder, then os.replace, so a reader
    (or a watchdog racing the engine) never sees a half-written file."""
    assert segs.dtype == np.uint8 and segs.ndim == 3, f"segs must be uint8 3D, got {segs.dtype} {segs.shape}"
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # a file object: savez would append '.npz' to a bare name
            np.savez_compressed(f, segs=segs)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """All members of the npz, decompressed now so a corrupt member fails here, clearly."""
    try:
        npz = np.load(path, allow_pickle=True)
    except FileNotFoundError:
        raise CaseError(f"{path.name}: file not found: {path}") from None
    except Exception as e:  # not a zip, truncated, unpicklable: many exception types
        raise CaseError(f"{path.name}: not a readable npz archive ({type(e).__name__}: {e})") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CaseError(f"{path.name}: not an npz archive (a bare {type(npz).__name__})")
    with npz:
        try:
            return {key: npz[key] for key in npz.files}
        except Exception as e:  # a corrupt member: bad CRC, zlib error, truncated pickle
            raise CaseError(f"{path.name}: corrupt npz member ({type(e).__name__}: {e})") from e


def _image(name: str, data: dict) -> np.ndarray:
    if "imgs" not in data:
        raise CaseError(f"{name}: no 'imgs' array (keys: {sorted(data)})")
    image = data["imgs"]
    if image.ndim != 3:
        raise CaseError(f"{name}: 'imgs' must be 3D (D, H, W), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise CaseError(f"{name}: 'imgs' must be uint8, got {image.dtype}", image.shape)
    if min(image.shape) == 0:
        raise CaseError(f"{name}: 'imgs' is empty, shape {image.shape}", image.shape)
    return image


def _build_case(name: str, data: dict, image: np.ndarray) -> Case:
    shape = image.shape
    boxes = _optional_sequence(data.get("boxes"))
    clicks = _optional_sequence(data.get("clicks"))
    if boxes is not None and clicks is not None and len(boxes) != len(clicks):
        raise CaseError(f"{name}: {len(boxes)} boxes but {len(clicks)} click entries", shape)
    k = len(boxes) if boxes is not None else len(clicks) if clicks is not None else 0

    orders = _click_orders(name, data.get("clicks_order"), k) if clicks is not None else [[] for _ in range(k)]
    prompts = []
    for c in range(k):
        box = _box(name, c, boxes[c], shape) if boxes is not None else None
        fg, bg = _clicks(name, c, clicks[c], shape) if clicks is not None else ([], [])
        prompts.append(ClassPrompts(box=box, fg=fg, bg=bg, order=orders[c]))

    iteration = max((len(o) for o in orders), default=0)
    if clicks is not None and iteration == 0 and any(p.fg or p.bg for p in prompts):
        iteration = max(len(p.fg) + len(p.bg) for p in prompts)
        warn(name, f"clicks without a usable clicks_order: assuming click iteration {iteration}")
    return Case(
        name=name,
        image=image,
        spacing=_spacing(name, data.get("spacing")),
        prompts=prompts,
        prev_pred=_prev_pred(name, data.get("prev_pred"), shape, k, iteration),
        iteration=iteration,
        has_boxes=bool(boxes),
    )


def _optional_sequence(value: np.ndarray | None) -> list | None:
    """boxes / clicks: an object array (K,), or absent. A 0-d array holding None counts as absent."""
    if value is None:
        return None
    if value.ndim == 0:
        value = value.item()
        if value is None:
            return None
        if isinstance(value, dict):  # a single class saved without the array wrapper
            return [value]
    return list(value)


def _spacing(name: str, value: np.ndarray | None) -> np.ndarray:
    """Stored (x, y, z) -> array order (z, y, x). Spacing only scales prompts and zoom, so a
    bad one is not worth losing the case over: fall back to 1 mm isotropic with a warning."""
    try:
        spacing = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        spacing = np.empty(0)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        warn(name, f"invalid or missing spacing {value!r}: using 1 mm isotropic")
        return np.ones(3)
    return spacing[::-1].copy()


def _box(name: str, c: int, raw, shape: tuple[int, int, int]) -> Box | None:
    """One box dict -> Box, clipped to the image. A box that cannot be made valid is dropped
    (that class runs without a box) with a warning rather than failing the case."""
    label = f"class {c + 1} box"
    if not isinstance(raw, dict) or any(k not in raw for k in BOX_KEYS):
        warn(name, f"{label} is not a dict with keys {BOX_KEYS}: ignored")
        return None
    try:
        v = {k: int(raw[k]) for k in BOX_KEYS}
    except (TypeError, ValueError):
        warn(name, f"{label} has non-integer values {raw}: ignored")
        return None
    bounds = [("z", v["z_min"], v["z_max"], shape[0]), ("y", v["z_mid_y_min"], v["z_mid_y_max"], shape[1]),
              ("x", v["z_mid_x_min"], v["z_mid_x_max"], shape[2])]
    for axis, lo, hi, size in bounds:
        if lo > hi:
            warn(name, f"{label} has {axis}_min {lo} > {axis}_max {hi}: ignored")
            return None
        if hi < 0 or lo >= size:
            warn(name, f"{label} {axis} range {lo}..{hi} lies outside the image (size {size}): ignored")
            return None
    clipped = [(max(lo, 0), min(hi, size - 1)) for _, lo, hi, size in bounds]
    if clipped != [(lo, hi) for _, lo, hi, _ in bounds]:
        warn(name, f"{label} {raw} extends beyond the image {shape}: clipped")
    (z0, z1), (y0, y1), (x0, x1) = clipped
    z_mid = min(max(v["z_mid"], z0), z1)
    if z_mid != v["z_mid"]:
        warn(name, f"{label} z_mid {v['z_mid']} outside {z0}..{z1}: clipped to {z_mid}")
    return Box(z_min=z0, z_max=z1, z_mid=z_mid, y_min=y0, y_max=y1, x_min=x0, x_max=x1)


def _clicks(name: str, c: int, raw, shape: tuple[int, int, int]) -> tuple[list, list]:
    """{'fg': [[z,y,x], ...], 'bg': [...]} -> two lists of int tuples; bad clicks are dropped."""
    if raw is None:
        return [], []
    if not isinstance(raw, dict):
        warn(name, f"class {c + 1} clicks {raw!r} are not a dict: ignored")
        return [], []
    out = []
    for kind in ("fg", "bg"):
        points = []
        for p in _as_list(raw.get(kind)):
            try:
                zyx = tuple(int(v) for v in np.asarray(p).reshape(-1))
            except (TypeError, ValueError):
                zyx = ()
            if len(zyx) != 3:
                warn(name, f"class {c + 1} {kind} click {p!r} is not [z, y, x]: dropped")
            elif not all(0 <= v < s for v, s in zip(zyx, shape)):
                warn(name, f"class {c + 1} {kind} click {zyx} is outside the image {shape}: dropped")
            else:
                points.append(zyx)
        out.append(points)
    return out[0], out[1]


def _as_list(value) -> list:
    """A click list as saved: a list of [z, y, x], an (n, 3) array, or None."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]


def _click_orders(name: str, raw: np.ndarray | None, k: int) -> list[list[str | None]]:
    """clicks_order in every form it comes in: a '<U2' (K, n) array, an object (K, n) array
    with None entries, a ragged object array or list of lists. One row per class."""
    if raw is None:
        return [[] for _ in range(k)]
    value = raw.item() if raw.ndim == 0 else raw
    if not any(isinstance(r, (list, tuple, np.ndarray)) for r in value):  # a flat row of entries
        value = [list(value)] if k == 1 else [[r] for r in value]
    rows = [list(r) for r in value]
    if len(rows) != k:
        warn(name, f"clicks_order has {len(rows)} rows for {k} classes: ignored")
        return [[] for _ in range(k)]
    return [[_order_entry(name, e) for e in row] for row in rows]


def _order_entry(name: str, entry) -> str | None:
    if entry is None or entry == "" or (isinstance(entry, float) and np.isnan(entry)):
        return None
    entry = str(entry)
    if entry not in ("fg", "bg"):
        warn(name, f"clicks_order entry {entry!r} is not 'fg'/'bg': read as no click")
        return None
    return entry


def _prev_pred(name: str, value: np.ndarray | None, shape, k: int, iteration: int) -> np.ndarray | None:
    """The previous output. Missing or unusable at a click iteration -> zeros (the evaluator
    starts no-box cases from zeros too); at iteration 0 it is None."""
    empty = np.zeros(shape, np.uint8) if iteration > 0 else None
    if value is None:
        if iteration > 0:
            warn(name, "click iteration without prev_pred: using zeros")
        return empty
    if value.shape != shape:
        warn(name, f"prev_pred shape {value.shape} differs from imgs {shape}: ignored")
        return empty
    if value.dtype != np.uint8:
        cast = value.astype(np.uint8) if value.dtype.kind in "biuf" else None
        if cast is None or not np.array_equal(cast, value):
            warn(name, f"prev_pred dtype {value.dtype} does not hold uint8 labels: ignored")
            return empty
        warn(name, f"prev_pred dtype {value.dtype}: cast to uint8")
        value = cast
    top = int(value.max())
    if top > k:
        warn(name, f"prev_pred holds labels up to {top} for {k} classes: labels > {k} cleared")
        value = value.copy()
        value[value > k] = 0
    return value
