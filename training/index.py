"""An index of folders of challenge-format training files, built once, refreshed per file.

    python -m training.index DIR [DIR ...] [--cache] [--workers N] [--cache-dir D]

Every `*.npz` below each folder is read once (in parallel, with a progress line) and
described: shape, spacing (z, y, x), modality, dataset, whether its labels are instances
(box-less), and per label its voxel count and bounding box. The organisers' layout is
`<modality>/<dataset>/<case>.npz` with the modality also the file-name prefix (CT_, MR_,
PET_, US_, Microscopy_); flat folders work too (the dataset is then the second token of
the file name, `MR_PyRadiomics_brain1` -> PyRadiomics).

The index of a folder lives in the cache directory (default runs/data, or $SEGFM_DATA_CACHE),
one sub-folder per data folder, so read-only data folders are fine. A refresh re-reads only
files whose size or mtime changed (new files too; vanished ones are dropped). A bad file
(unreadable, imgs/gts shapes differ, no labels, absurd spacing, unknown modality prefix) is
recorded with a one-line reason and skipped; it is re-read only when it changes.

`--cache` also writes, in the same pass, the uncompressed arrays (`.img.npy` uint8 image,
converted like the engine would; `.gts.npy` labels in their own integer type) that
training.data memory-maps, so that a sample costs its crop instead of a decompression.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from app.io import to_uint8

INDEX_VERSION = 1
MODALITIES = {"ct": "CT", "mr": "MR", "pet": "PET", "us": "US", "microscopy": "Microscopy"}
PREFIXES = ", ".join(f"{m}_" for m in MODALITIES.values())
LOOKS = {v: k for k, v in MODALITIES.items()}  # 'CT' -> 'ct' (training.synth.LOOKS names)
SPACING_RANGE = (1e-6, 1e3)  # mm; outside is absurd (a unit error or a placeholder)
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / "runs" / "data"


class BadCase(Exception):
    """A file that cannot be used for training; str() is the one-line reason."""


@dataclass
class CaseInfo:
    """One usable training file. Labels are parallel lists: id, voxel count and the bounding
    box as [z0, y0, x0, z1, y1, x1] (lo inclusive, hi exclusive) in array axes."""

    rel: str                    # path relative to the data folder
    name: str                   # file stem, e.g. CT_AbdomenAtlas_BDMAP_00000006
    modality: str               # CT, MR, PET, US, Microscopy
    dataset: str
    shape: list[int]            # (z, y, x)
    spacing: list[float]        # (z, y, x) mm (stored x, y, z in the file)
    instance: bool              # instance labels (text_prompts instance_label == 1, or microscopy)
    img_dtype: str
    gts_dtype: str
    key: str                    # "<size>-<mtime_ns>": the refresh test and the cache file tag
    label_ids: list[int] = field(default_factory=list)
    label_counts: list[int] = field(default_factory=list)
    label_boxes: list[list[int]] = field(default_factory=list)
    note: str | None = None     # e.g. the image dtype conversion

    @property
    def look(self) -> str:
        return LOOKS[self.modality]

    @property
    def no_box(self) -> bool:
        """As the organisers do: microscopy files and instance labels get no boxes."""
        return self.instance or self.modality == "Microscopy"


@dataclass
class Index:
    root: Path                                   # the data folder (absolute)
    cache: Path                                  # its cache sub-folder (index.json, arrays/)
    cases: list[CaseInfo]
    bad: dict[str, str]                          # rel -> one-line reason
    scanned: int = 0                             # files read in the last refresh (0: all reused)

    def path(self, case: CaseInfo) -> Path:
        return self.root / case.rel

    def array_paths(self, case: CaseInfo) -> tuple[Path, Path]:
        """The memory-mappable (image, labels) of a case; tagged with its key, so a changed
        file never meets a stale array."""
        return array_paths(self.cache, case.rel, case.key)


def array_paths(cache: Path, rel: str, key: str) -> tuple[Path, Path]:
    stem = cache / "arrays" / rel
    return stem.with_name(f"{stem.stem}.{key}.img.npy"), stem.with_name(f"{stem.stem}.{key}.gts.npy")


def cache_folder(root: Path, cache_dir: Path | None = None) -> Path:
    base = Path(cache_dir or os.environ.get("SEGFM_DATA_CACHE") or DEFAULT_CACHE)
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    return base / f"{root.resolve().name}-{digest}"


def modality_and_dataset(rel: Path) -> tuple[str, str]:
    """Modality from the file-name prefix (else a modality folder on the path); dataset from
    the folder holding the file unless that is a modality folder or the data folder itself,
    then from the second token of the file name."""
    tokens = rel.stem.split("_")
    modality = MODALITIES.get(tokens[0].lower())
    if modality is None:
        modality = next((MODALITIES[p.lower()] for p in rel.parts[:-1] if p.lower() in MODALITIES), None)
    if modality is None:
        raise BadCase(f"unknown modality prefix {tokens[0]!r} (expected {PREFIXES})")
    parent = rel.parts[-2] if len(rel.parts) >= 2 else None
    if parent is not None and parent.lower() not in MODALITIES:
        return modality, parent
    return modality, tokens[1] if len(tokens) > 2 else "default"


def _instance_flag(npz) -> bool:
    if "text_prompts" not in npz.files:
        return False
    try:
        prompts = npz["text_prompts"]
        prompts = prompts.item() if prompts.ndim == 0 else prompts
        return isinstance(prompts, dict) and int(prompts.get("instance_label", 0)) == 1
    except Exception:  # noqa: BLE001 (a broken optional member only loses the instance flag)
        return False


def _labels_integer(gts: np.ndarray) -> np.ndarray:
    if gts.dtype == np.bool_:
        return gts.astype(np.uint8)
    if not np.issubdtype(gts.dtype, np.integer) and (
            not np.issubdtype(gts.dtype, np.floating) or not np.all(np.mod(gts, 1) == 0)):
        raise BadCase(f"gts of type {gts.dtype} holds non-integer values")
    lo, hi = gts.min(), gts.max()
    if lo < 0:
        raise BadCase(f"gts holds negative labels (min {lo})")
    target = np.uint8 if hi <= 255 else np.uint16 if hi <= 65535 else np.uint32
    return gts if gts.dtype == target else gts.astype(target)


def label_stats(gts: np.ndarray) -> tuple[list[int], list[int], list[list[int]]]:
    """Per nonzero label: id, voxel count, bounding box [z0, y0, x0, z1, y1, x1] (hi exclusive)."""
    if gts.max() <= 2**22:
        counts = np.bincount(gts.ravel())
        ids = np.flatnonzero(counts[1:]) + 1
        counts = counts[ids]
        objects = ndimage.find_objects(gts.astype(np.int32) if gts.dtype == np.uint32 else gts)
        slices = [objects[i - 1] for i in ids]
    else:  # huge sparse ids: compact them first
        ids, dense = np.unique(gts, return_inverse=True)
        dense = dense.reshape(gts.shape).astype(np.int32) + (0 if ids[0] == 0 else 1)  # 0 = background
        counts = np.bincount(dense.ravel())[1:]
        ids = ids[ids > 0]
        slices = ndimage.find_objects(dense)
    boxes = [[s.start for s in sl] + [s.stop for s in sl] for sl in slices]
    return [int(i) for i in ids], [int(c) for c in counts], boxes


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
    os.replace(tmp, path)


def read_case(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, str | None, str, str]:
    """(image uint8, labels int, spacing (z, y, x), instance flag, note, image dtype, gts dtype)
    of a training file, or BadCase. The image is converted with app.io.to_uint8."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("imgs", "gts", "spacing") if k not in npz.files]
            if missing:
                raise BadCase(f"missing {', '.join(missing)} (keys: {', '.join(sorted(npz.files))})")
            image, gts, spacing = npz["imgs"], npz["gts"], npz["spacing"]
            instance = _instance_flag_pickled(path) if "text_prompts" in npz.files else False
    except BadCase:
        raise
    except Exception as e:  # noqa: BLE001 (not a zip, truncated, bad CRC, zlib error: many types)
        raise BadCase(f"unreadable ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})") from None
    if image.ndim != 3 or min(image.shape) == 0:
        raise BadCase(f"imgs must be a non-empty 3-D array, got shape {image.shape}")
    if gts.shape != image.shape:
        raise BadCase(f"imgs shape {image.shape} but gts shape {gts.shape}")
    try:
        sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        sp = np.empty(0)
    if (sp.shape != (3,) or not np.all(np.isfinite(sp))
            or np.any(sp <= SPACING_RANGE[0]) or np.any(sp > SPACING_RANGE[1])):
        raise BadCase(f"absurd spacing {np.asarray(spacing).tolist()!r}")
    img_dtype, gts_dtype = str(image.dtype), str(gts.dtype)
    labels = _labels_integer(gts)
    try:
        image, note = to_uint8(image)
    except TypeError as e:
        raise BadCase(f"imgs {e}") from None
    return image, labels, sp[::-1].copy(), instance, note, img_dtype, gts_dtype


def _instance_flag_pickled(path: Path) -> bool:
    """text_prompts is an object array (pickled): read that member alone."""
    try:
        with np.load(path, allow_pickle=True) as npz:
            return _instance_flag(npz)
    except Exception:  # noqa: BLE001 (the flag is optional)
        return False


def scan(root: Path, rel: str, key: str, arrays: tuple[Path, Path] | None) -> CaseInfo | str:
    """Describe one file (and write its cache arrays when `arrays` is given); a str is the
    one-line reason it is bad."""
    try:
        modality, dataset = modality_and_dataset(Path(rel))
        image, labels, spacing, instance, note, img_dtype, gts_dtype = read_case(root / rel)
        ids, counts, boxes = label_stats(labels)
        if not ids:
            raise BadCase("no labels (gts is all background)")
    except BadCase as e:
        return str(e)
    except MemoryError:
        return "too large to read in memory"
    if arrays is not None:
        _save_npy(arrays[0], image)
        _save_npy(arrays[1], labels)
    return CaseInfo(rel=rel, name=Path(rel).stem, modality=modality, dataset=dataset, shape=list(image.shape),
                    spacing=[float(s) for s in spacing], instance=bool(instance or modality == "Microscopy"),
                    img_dtype=img_dtype, gts_dtype=gts_dtype, key=key, label_ids=ids, label_counts=counts,
                    label_boxes=boxes, note=note)


def _scan_job(args):
    return args[1], scan(*args)


def list_files(root: Path) -> dict[str, str]:
    """rel -> key ("size-mtime_ns") of every *.npz below root (symlinks followed), sorted."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for f in sorted(filenames):
            if f.endswith(".npz") and not f.startswith("."):
                p = Path(dirpath, f)
                try:
                    st = p.stat()
                except OSError:
                    continue
                out[str(p.relative_to(root))] = f"{st.st_size}-{st.st_mtime_ns}"
    return out


class Progress:
    """A one-line progress bar on stderr (rewritten in place on a terminal, else every 10 %)."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.label, self.done, self.enabled = total, label, 0, enabled and total > 0
        self.start, self.tty, self.next_pct = time.monotonic(), sys.stderr.isatty(), 10

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        pct = 100 * self.done // self.total
        if self.tty or pct >= self.next_pct or self.done == self.total:
            elapsed = time.monotonic() - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            bar = "#" * (pct // 5) + "." * (20 - pct // 5)
            line = f"{self.label} [{bar}] {self.done}/{self.total} {rate:.1f} files/s eta {eta:.0f}s"
            print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
            self.next_pct = pct - pct % 10 + 10
            if self.tty and self.done == self.total:
                print(file=sys.stderr, flush=True)


def load_index(root: Path, cache_dir: Path | None = None) -> Index | None:
    """The stored index of a folder, or None (never built, or of an older version)."""
    loaded = _load(Path(root).resolve(), cache_dir)
    return None if loaded is None else loaded[0]


def _load(root: Path, cache_dir: Path | None):
    folder = cache_folder(root, cache_dir)
    try:
        stored = json.loads((folder / "index.json").read_text())
    except (OSError, ValueError):
        return None
    if stored.get("version") != INDEX_VERSION:
        return None
    cases = [CaseInfo(**c) for c in stored["cases"]]
    return Index(root, folder, cases, {rel: reason for rel, (_, reason) in stored["bad"].items()}), stored


def build_index(root, cache_dir: Path | None = None, *, workers: int | None = None, make_cache: bool = False,
                progress: bool = True) -> Index:
    """Index one data folder: reuse the stored entries of unchanged files, (re)read the others
    in `workers` processes (default: all cores; 0 or 1 = in this process). `make_cache` also
    writes the memory-mappable arrays of every case lacking them. Saved atomically."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    folder = cache_folder(root, cache_dir)
    loaded = _load(root, cache_dir)
    old_cases, old_bad = {}, {}
    if loaded is not None:
        index, stored = loaded
        old_cases = {c.rel: c for c in index.cases}
        old_bad = {rel: tuple(v) for rel, v in stored["bad"].items()}
    files = list_files(root)
    cases, bad, todo = {}, {}, []
    for rel, key in files.items():
        if rel in old_cases and old_cases[rel].key == key:
            case = old_cases[rel]
            if make_cache and not all(p.exists() for p in array_paths(folder, rel, key)):
                todo.append(rel)
            else:
                cases[rel] = case
        elif rel in old_bad and old_bad[rel][0] == key:
            bad[rel] = old_bad[rel][1]
        else:
            todo.append(rel)
    jobs = [(root, rel, files[rel], array_paths(folder, rel, files[rel]) if make_cache else None) for rel in todo]
    bar = Progress(len(jobs), f"index {root.name}", progress)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            results = pool.map(_scan_job, jobs, chunksize=1)
            for rel, result in results:
                (cases.__setitem__ if isinstance(result, CaseInfo) else bad.__setitem__)(rel, result)
                bar.update()
    else:
        for job in jobs:
            rel, result = _scan_job(job)
            (cases.__setitem__ if isinstance(result, CaseInfo) else bad.__setitem__)(rel, result)
            bar.update()
    index = Index(root, folder, [cases[rel] for rel in sorted(cases)], {rel: bad[rel] for rel in sorted(bad)},
                  scanned=len(jobs))
    if jobs or loaded is None or set(files) != set(old_cases) | set(old_bad):
        _save(index, files)
        _drop_stale_arrays(index)
    return index


def _save(index: Index, files: dict[str, str]) -> None:
    index.cache.mkdir(parents=True, exist_ok=True)
    stored = {"version": INDEX_VERSION, "root": str(index.root),
              "cases": [asdict(c) for c in index.cases],
              "bad": {rel: [files[rel], reason] for rel, reason in index.bad.items()}}
    tmp = index.cache / f"index.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(stored, separators=(",", ":")))
    os.replace(tmp, index.cache / "index.json")


def _drop_stale_arrays(index: Index) -> None:
    """Cache arrays of changed or vanished files (their key tag no longer matches)."""
    arrays = index.cache / "arrays"
    if not arrays.is_dir():
        return
    keep = {p for c in index.cases for p in index.array_paths(c)}
    for p in arrays.rglob("*.npy"):
        if p not in keep:
            p.unlink(missing_ok=True)


def bad_lines(index: Index) -> list[str]:
    """One line per skipped file."""
    return [f"skipped {index.root / rel}: {reason}" for rel, reason in index.bad.items()]


def summary(index: Index) -> str:
    by_modality: dict[str, int] = {}
    for c in index.cases:
        by_modality[c.modality] = by_modality.get(c.modality, 0) + 1
    labels = sum(len(c.label_ids) for c in index.cases)
    parts = ", ".join(f"{m} {n}" for m, n in sorted(by_modality.items()))
    return (f"{index.root}: {len(index.cases)} cases ({parts}), {labels} labels, "
            f"{len({(c.modality, c.dataset) for c in index.cases})} datasets, {len(index.bad)} skipped, "
            f"{index.scanned} read now; index {index.cache / 'index.json'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", type=Path, help="data folders")
    parser.add_argument("--cache", action="store_true", help="also write the memory-mappable arrays")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default $SEGFM_DATA_CACHE or {DEFAULT_CACHE}")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    for root in args.data:
        index = build_index(root, args.cache_dir, workers=args.workers, make_cache=args.cache)
        for line in bad_lines(index):
            print(line, file=sys.stderr)
        print(summary(index))
    return 0


if __name__ == "__main__":
    sys.exit(main())
