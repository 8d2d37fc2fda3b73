"""The challenge I/O contract: load and validate one case, write one prediction.

Everything that knows the npz layout lives here (see ../shared/docs/challenge-contract.md),
so the engine sees only a validated `Case` in array order (z, y, x). Problems are handled
by the rule "never silently wrong": a fatal problem raises `CaseError` (one line for
stderr, with the image shape when it is known so the caller can still write a valid
file); a local problem (one bad box, one bad click, a bad spacing or prev_pred) is
repaired or dropped with a one-line warning on stderr, so one bad prompt does not cost
the whole case. Each member (boxes, one class's box or clicks, clicks_order, prev_pred,
spacing) is read on its own: even a failure nobody foresaw costs that member only.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BOX_KEYS = ("z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")
MAX_CLASSES = 255  # the output is uint8: labels 1..255
TEMP_SUFFIX = ".tmp"
LINE_LIMIT = 300  # characters of one stderr line (a repr of a big array must not flood the log)


class CaseError(Exception):
    """A case that cannot be processed. str() is one line for stderr; `shape` is the image
    shape when the image was read (a valid all-zero output can then still be written)."""

    def __init__(self, message: str, shape: tuple[int, ...] | None = None):
        super().__init__(one_line(message))
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

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) inclusive corners in array axes: how the engine passes a box around."""
        return np.array([self.z_min, self.y_min, self.x_min]), np.array([self.z_max, self.y_max, self.x_max])

    @classmethod
    def from_bounds(cls, lo, hi, z_mid: int | None = None) -> Box:
        """A box from corners; without z_mid (an autobox) the 2D box sits on the middle slice."""
        z_mid = (int(lo[0]) + int(hi[0])) // 2 if z_mid is None else int(z_mid)
        return cls(int(lo[0]), int(hi[0]), z_mid, int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2]))


@dataclass
class ClassPrompts:
    """The prompts of one class; class index c (0-based) is output label c + 1."""

    box: Box | None
    fg: list[tuple[int, int, int]]
    bg: list[tuple[int, int, int]]
    order: list[str | None]
    text: str = ""  # the class's text prompt (iteration 0 only, as the organisers send it), or ""

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
    print(one_line(f"{name}: warning: {message}"), file=sys.stderr, flush=True)


def one_line(text: str) -> str:
    """Whitespace collapsed and cut at LINE_LIMIT: every message is exactly one readable line."""
    text = " ".join(text.split())
    return text if len(text) <= LINE_LIMIT else text[: LINE_LIMIT - 3] + "..."


def to_uint8(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """`image` as the challenge's uint8, with a note on how it was converted (None when it already
    was uint8). Raises TypeError for a non-numeric array.

    Rule: an array whose values are all whole numbers in 0..255 (an int16 or float copy of a
    uint8 image) is cast as is; anything else is normalised the way the organisers normalise
    non-CT images: clipped to the 0.5 and 99.5 percentiles of its finite nonzero voxels and
    scaled to 0..255, non-finite voxels set to 0. Shared with training, which reads the
    organisers' training files with it.
    """
    if image.dtype == np.uint8:
        return image, None
    if image.dtype.kind not in "biuf":
        raise TypeError(f"dtype {image.dtype} is not numeric")
    cast = _whole_uint8(image)
    if cast is not None:
        return cast, f"{image.dtype} holding whole values in 0..255: cast to uint8"
    x = image.astype(np.float64)  # the one working copy: everything below is in place
    finite = np.isfinite(x)
    nonzero = x[finite & (x != 0)]
    if nonzero.size == 0:
        return np.zeros(image.shape, np.uint8), f"{image.dtype} without a finite nonzero voxel: all zero"
    lo, hi = (float(v) for v in np.percentile(nonzero, [0.5, 99.5]))
    del nonzero
    x[~finite] = -np.inf  # clipped to lo below, i.e. 0
    if hi > lo:
        np.clip(x, lo, hi, out=x)
        x -= lo
        x *= 255 / (hi - lo)
        np.rint(x, out=x)
    else:  # (nearly) a single nonzero value, e.g. a mask: at or above it -> 255
        x = (x >= hi) * 255.0
    note = (f"{image.dtype}: scaled to uint8 from the 0.5/99.5 percentile window {lo:.6g}..{hi:.6g} "
            "of the nonzero voxels")
    return x.astype(np.uint8), note + ("" if finite.all() else ", non-finite voxels set to 0")


def load_case(path: str | os.PathLike) -> Case:
    """Read and validate one challenge npz. Raises CaseError for fatal problems."""
    path = Path(path)
    name = path.name
    data = _read_arrays(path)
    image = _image(name, data)
    try:
        return _build_case(name, data, image)
    except CaseError:
        raise
    except Exception as e:  # a last resort (every member is guarded): keep the shape for the output
        raise CaseError(f"{name}: unreadable prompts ({type(e).__name__}: {e})", image.shape) from e


def write_segs(path: str | os.PathLike, segs: np.ndarray) -> None:
    """Write `segs` atomically: a temp file in the same folder, then os.replace, so a reader
    (or a watchdog racing the engine) never sees a half-written file."""
    assert segs.dtype == np.uint8 and segs.ndim == 3, f"segs must be uint8 3D, got {segs.dtype} {segs.shape}"
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:  # a file object: savez would append '.npz' to a bare name
            np.savez_compressed(f, segs=segs)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Delete the temp files of `path` that an earlier run killed mid-write (SIGKILL, OOM) left."""
    path = Path(path)
    prefix = f".{path.name}."
    for tmp in path.parent.iterdir():
        if tmp.name.startswith(prefix) and tmp.name.endswith(TEMP_SUFFIX):
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
    if min(image.shape) == 0:
        raise CaseError(f"{name}: 'imgs' is empty, shape {image.shape}", image.shape)
    try:
        image, note = to_uint8(image)
    except TypeError as e:
        raise CaseError(f"{name}: 'imgs' {e}", image.shape) from None
    if note:
        warn(name, f"'imgs' is {note}")
    return image


def _build_case(name: str, data: dict, image: np.ndarray) -> Case:
    shape = image.shape
    boxes = _member(name, "boxes", None, _optional_sequence, data.get("boxes"))
    clicks = _member(name, "clicks", None, _optional_sequence, data.get("clicks"))
    if boxes is not None and clicks is not None and len(boxes) != len(clicks):
        raise CaseError(f"{name}: {len(boxes)} boxes but {len(clicks)} click entries", shape)
    k = len(boxes) if boxes is not None else len(clicks) if clicks is not None else 0
    if k > MAX_CLASSES:
        raise CaseError(f"{name}: {k} classes, but the uint8 output holds labels 1..{MAX_CLASSES} only", shape)

    orders = _no_orders(k)
    if clicks is not None:
        orders = _member(name, "clicks_order", orders, _click_orders, name, data.get("clicks_order"), k)
    texts = _member(name, "text_prompts", {}, read_text_prompts, data.get("text_prompts"))
    prompts = []
    for c in range(k):
        box = None if boxes is None else _member(name, f"class {c + 1} box", None, _box, name, c, boxes[c], shape)
        fg, bg = ([], []) if clicks is None else _member(
            name, f"class {c + 1} clicks", ([], []), _clicks, name, c, clicks[c], shape)
        prompts.append(ClassPrompts(box=box, fg=fg, bg=bg, order=orders[c], text=texts.get(c + 1, "")))

    iteration = max((len(o) for o in orders), default=0)
    if clicks is not None and iteration == 0 and any(p.fg or p.bg for p in prompts):
        iteration = max(len(p.fg) + len(p.bg) for p in prompts)
        warn(name, f"clicks without a usable clicks_order: assuming click iteration {iteration}")
    empty = np.zeros(shape, np.uint8) if iteration > 0 else None
    return Case(
        name=name,
        image=image,
        spacing=_member(name, "spacing", np.ones(3), _spacing, name, data.get("spacing")),
        prompts=prompts,
        prev_pred=_member(name, "prev_pred", empty, _prev_pred, name, data.get("prev_pred"), shape, k, empty),
        iteration=iteration,
        has_boxes=bool(boxes),
    )


def _member(name: str, what: str, default, read, *args):
    """read(*args), or `default` with a warning if it fails in a way nobody foresaw: one
    malformed member must not cost the other classes' prompts."""
    try:
        return read(*args)
    except Exception as e:  # noqa: BLE001 (any failure here degrades this member only)
        warn(name, f"{what} unreadable ({type(e).__name__}: {e}): ignored")
        return default


def _no_orders(k: int) -> list[list]:
    return [[] for _ in range(k)]


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
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"a single {type(value).__name__}, not one entry per class")
    elif value.ndim != 1:
        raise ValueError(f"shape {value.shape}, not (K,)")
    return list(value)


def read_text_prompts(value: np.ndarray | None) -> dict[int, str]:
    """text_prompts: a 0-d object array holding {"1": "description", ..., "instance_label": 0};
    returns {label: text} for the entries whose key is a class label and whose value is text."""
    if value is None:
        return {}
    prompts = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    if not isinstance(prompts, dict):
        raise TypeError(f"a {type(prompts).__name__}, not a dict")
    return {int(key): text for key, text in prompts.items()
            if str(key).strip().isdigit() and isinstance(text, str)}


def pack_text_prompts(texts: dict[int, str]) -> np.ndarray:
    """{label: text} as the organisers store text_prompts (read_text_prompts reads it back)."""
    return np.array(dict({str(label): text for label, text in texts.items()}, instance_label=0), dtype=object)


def _spacing(name: str, value: np.ndarray | None) -> np.ndarray:
    """Stored (x, y, z) -> array order (z, y, x). Spacing only scales prompts and zoom, so a
    bad one is not worth losing the case over: fall back to 1 mm isotropic with a warning."""
    numeric = value is not None and value.dtype.kind in "iuf"  # not strings, bools or objects
    spacing = np.asarray(value, dtype=np.float64).reshape(-1) if numeric else np.empty(0)
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
    read = {k: _coordinate(raw[k]) for k in BOX_KEYS}
    if None in read.values():
        warn(name, f"{label} has values that are not finite numbers {raw}: ignored")
        return None
    v = {k: n for k, (n, _) in read.items()}
    if any(rounded for _, rounded in read.values()):
        warn(name, f"{label} has float coordinates: rounded to {v}")
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
            zyx, rounded = _point(p)
            if zyx is None:
                warn(name, f"class {c + 1} {kind} click {p!r} is not [z, y, x] of finite numbers: dropped")
            elif not all(0 <= v < s for v, s in zip(zyx, shape)):
                warn(name, f"class {c + 1} {kind} click {zyx} is outside the image {shape}: dropped")
            else:
                if rounded:
                    warn(name, f"class {c + 1} {kind} click {p!r} has float coordinates: rounded to {zyx}")
                points.append(zyx)
        out.append(points)
    return out[0], out[1]


def _as_list(value) -> list:
    """A click list as saved: a list of [z, y, x], an (n, 3) array, or None."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]


def _point(p) -> tuple[tuple[int, int, int] | None, bool]:
    """One click -> ((z, y, x), whether floats were rounded); (None, False) if it is not three
    numbers. Elements are read one by one: np.asarray would turn [True, '1', 2] into numbers."""
    if isinstance(p, np.ndarray):
        values = list(p.reshape(-1)) if p.size == 3 else []
    else:
        values = list(p) if isinstance(p, (list, tuple)) else []
    read = [_coordinate(v) for v in values] if len(values) == 3 else [None]
    if None in read:
        return None, False
    return tuple(n for n, _ in read), any(rounded for _, rounded in read)


def _coordinate(value) -> tuple[int, bool] | None:
    """A voxel coordinate -> (int, whether it was a float, rounded); None unless a finite real
    number. Strings and bools are refused: int('5') and int(True) would accept them silently."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value), False
    if isinstance(value, (float, np.floating)) and np.isfinite(value):
        return int(np.rint(value)), True
    return None


def _click_orders(name: str, raw: np.ndarray | None, k: int) -> list[list[str | None]]:
    """clicks_order in every form it comes in: a '<U2' (K, n) array, an object (K, n) array
    with None entries, a ragged object array or list of lists. One row per class."""
    value = raw.item() if raw is not None and raw.ndim == 0 else raw
    if value is None:
        return _no_orders(k)
    if not isinstance(value, (list, tuple, np.ndarray)) or (isinstance(value, np.ndarray) and value.ndim > 2):
        warn(name, f"clicks_order {value!r} is not one row per class: ignored")
        return _no_orders(k)
    if not any(isinstance(r, (list, tuple, np.ndarray)) for r in value):  # a flat row of entries
        value = [list(value)] if k == 1 else [[r] for r in value]
    if len(value) != k:
        warn(name, f"clicks_order has {len(value)} rows for {k} classes: ignored")
        return _no_orders(k)
    return [_member(name, f"class {c + 1} clicks_order", [], _order_row, name, c, row) for c, row in enumerate(value)]


def _order_row(name: str, c: int, row) -> list[str | None]:
    """One class's rounds; a row that is not a flat list costs that class's order only."""
    if not isinstance(row, (list, tuple, np.ndarray)) or (isinstance(row, np.ndarray) and row.ndim != 1):
        warn(name, f"clicks_order row of class {c + 1} {row!r} is not a list of rounds: ignored")
        return []
    return [_order_entry(name, e) for e in row]


def _order_entry(name: str, entry) -> str | None:
    if entry is None or (isinstance(entry, str) and entry == "") or (isinstance(entry, float) and np.isnan(entry)):
        return None
    if isinstance(entry, str) and entry in ("fg", "bg"):
        return str(entry)
    warn(name, f"clicks_order entry {entry!r} is not 'fg'/'bg': read as no click")
    return None


def _prev_pred(name: str, value: np.ndarray | None, shape, k: int, empty: np.ndarray | None) -> np.ndarray | None:
    """The previous output. Missing or unusable -> `empty`: zeros at a click iteration (the
    evaluator starts no-box cases from zeros too), None at iteration 0."""
    if value is None:
        if empty is not None:
            warn(name, "click iteration without prev_pred: using zeros")
        return empty
    if value.shape != shape:
        warn(name, f"prev_pred shape {value.shape} differs from imgs {shape}: ignored")
        return empty
    if value.dtype != np.uint8:
        cast = _whole_uint8(value)
        if cast is None:
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


def _whole_uint8(value: np.ndarray) -> np.ndarray | None:
    """`value` cast to uint8 if every element is a whole number in 0..255, else None. Checked
    before the cast, so NaN or out-of-range values never reach numpy (and its RuntimeWarning)."""
    if value.dtype.kind not in "biuf":
        return None
    if value.dtype.kind == "f" and not (np.isfinite(value).all() and (np.round(value) == value).all()):
        return None
    if value.min() < 0 or value.max() > 255:
        return None
    return value.astype(np.uint8)
