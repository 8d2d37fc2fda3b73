"""Real labelled training data: folders of challenge-format files as a seeded stream of cropped cases.

    data = LabelledData(["/data/train_npz"], cache=True)             # index built/refreshed here
    stream = data.stream(seed=0, rank=rank, start=0, workers=2)      # DataLoader workers, prefetch
    case = next(stream)                                              # a training.synth.SynthCase
    ckpt["data"] = stream.state_dict()                               # {"seed": 0, "next": k}

What a sample is. One label of one case, drawn hierarchically: modality, then dataset, then
case, then label (an instance for instance data), each level uniform unless `weights` says
otherwise. The case comes back as a `training.synth.SynthCase` cropped to that label's bounding
box plus context (`margin` x the extent and at least `min_margin` voxels per side, clipped to
the image), so train.py can mix it with procedural cases unchanged:
  - labels: THE CHOSEN LABEL IS 1. Other labels meeting the crop are 2..K (by original id,
    contiguous; beyond 254 of them the rest share 255) with `keep_others`, else background.
  - image uint8 (converted with app.io.to_uint8 when the file holds another type), spacing
    (z, y, x) mm, look ('ct', 'mr', 'pet', 'us', 'microscopy'), no_box (microscopy files and
    instance labels, text_prompts instance_label == 1: the organisers give those no box).
  - extra attributes: source (file stem), label_id (the original id), origin (crop corner in
    the file's voxels), stride (1 unless `max_voxels` thinned the crop; spacing is scaled).

Streams. Sample k of rank r is a pure function of (seed, r, k): numpy Generator([seed, r, k])
draws it. A stream's whole state is {"seed", "next"}; a resumed run (any number of processes)
passes start=next (its own rank's, or e.g. step x samples-per-step) and every rank continues
its own stream without replaying another's. Workers > 0 use a torch DataLoader (order kept, so
the stream is the same with 0, 1 or 2 workers); the interaction simulation stays in the step.

Speed. Without the cache a sample decompresses the whole npz (seconds for a large file).
With `cache=True` (default) each case is written once, on first use or ahead by
`python -m training.index DIR --cache`, as uncompressed .npy arrays (image already uint8) and
memory-mapped, so a sample costs about its crop. See harness/bench_data.py (`make bench-data`).

Splits are properties of folders (pass training and validation folders separately) or of a
split file (lines `<split> <pattern>`, fnmatch on the case name or relative path, first match
wins, unmatched cases are `train`); never of code. The bundled real cases are one more folder
(`bundled_folders()`, split by training/bundled_split.txt).
"""

from __future__ import annotations

import fnmatch
import itertools
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

from training.index import (
    BadCase,
    CaseInfo,
    Index,
    _labels_integer,
    _save_npy,
    bad_lines,
    build_index,
    load_index,
    read_case,
    to_uint8,
)
from training.synth import SynthCase

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = (ROOT / "tests" / "data" / "labelled", ROOT.parent / "shared" / "samples" / "labelled")
BUNDLED_SPLIT = Path(__file__).with_name("bundled_split.txt")
MAX_OPEN = 32  # memory-mapped cases kept open per process


def bundled_folders() -> list[Path]:
    """The real labelled cases shipped with the repository (and ../shared when present)."""
    return [p for p in BUNDLED if p.is_dir()]


def read_split(path) -> list[tuple[str, str]]:
    """Split-file rules: (split, pattern) per non-empty, non-comment line `<split> <pattern>`."""
    rules = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected '<split> <pattern>', got {line!r}")
        rules.append((parts[0], parts[1]))
    return rules


def split_of(case: CaseInfo, rules: list[tuple[str, str]]) -> str:
    for split, pattern in rules:
        if fnmatch.fnmatchcase(case.name, pattern) or fnmatch.fnmatchcase(case.rel, pattern):
            return split
    return "train"


def parse_weights(text: str | None) -> dict[str, float]:
    """'CT=2,Microscopy=0.5,CT_AbdFake_003=0' -> dict. Keys name a modality, a dataset
    ('AbdFake' or 'CT/AbdFake'), a case (file stem) or a label ('<stem>:<id>'); 0 excludes."""
    out = {}
    for item in (text or "").split(","):
        if item.strip():
            key, _, value = item.partition("=")
            out[key.strip()] = float(value)
    return out


def crop_window(box, shape, margin: float = 0.5, min_margin: int = 24) -> tuple[slice, slice, slice]:
    """The label's box [z0, y0, x0, z1, y1, x1] grown by max(margin x extent, min_margin)
    voxels on each side, clipped to the image."""
    lo, hi = np.asarray(box[:3]), np.asarray(box[3:])
    pad = np.maximum(np.ceil(margin * (hi - lo)), min_margin).astype(int)
    lo, hi = np.maximum(lo - pad, 0), np.minimum(hi + pad, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def thinning(shape, spacing, max_voxels: int | None) -> np.ndarray:
    """Integer strides that bring a crop under max_voxels, thinning the finest axis first."""
    stride = np.ones(3, int)
    if not max_voxels:
        return stride
    shape, spacing = np.asarray(shape), np.asarray(spacing, float)
    while np.prod(-(-shape // stride)) > max_voxels:
        fine = np.where(-(-shape // stride) > 1, spacing * stride, np.inf)
        if not np.isfinite(fine).any():
            break
        stride[int(np.argmin(fine))] += 1
    return stride


class LabelledData:
    """The usable labels of all cases below `folders`, with hierarchical sampling and crops.

    folders: data folders (indexed and refreshed here unless refresh=False and an index exists).
    split, split_file: keep only the cases of that split (see read_split); None keeps all.
    cache: memory-map uncompressed arrays (written on first use) instead of decompressing.
    weights: see parse_weights (str or dict). min_voxels: smaller labels are not drawn.
    margin, min_margin, keep_others, max_voxels: the crop (see the module doc).
    Duplicate case names across folders: the first folder's copy is used.
    """

    def __init__(self, folders, *, split: str | None = None, split_file=None, cache: bool = True,
                 cache_dir=None, weights=None, min_voxels: int = 10, margin: float = 0.5, min_margin: int = 24,
                 keep_others: bool = True, max_voxels: int | None = None, workers: int | None = None,
                 refresh: bool = True, verbose: bool = True):
        self.cache, self.margin, self.min_margin = cache, margin, min_margin
        self.keep_others, self.max_voxels = keep_others, max_voxels
        self.weights = parse_weights(weights) if isinstance(weights, str) or weights is None else dict(weights)
        rules = read_split(split_file) if split_file else []
        self.indexes: list[Index] = []
        self.cases: list[tuple[Index, CaseInfo]] = []
        self.duplicates, self.bad = 0, 0
        seen = set()
        for folder in folders:
            index = None if refresh else load_index(Path(folder), cache_dir)
            if index is None:
                index = build_index(folder, cache_dir, workers=workers, progress=verbose)
            self.indexes.append(index)
            self.bad += len(index.bad)
            if verbose:
                for line in bad_lines(index):
                    print(line, file=sys.stderr, flush=True)
            for case in index.cases:
                if split is not None and split_of(case, rules) != split:
                    continue
                if case.name in seen:
                    self.duplicates += 1
                    continue
                seen.add(case.name)
                self.cases.append((index, case))
        self._tables(min_voxels)
        self._open: OrderedDict = OrderedDict()

    # ------------------------------------------------------------------ sampling tables
    def _weight(self, *keys) -> float:
        w = 1.0
        for key in keys:
            w *= self.weights.get(key, 1.0)
        return w

    def _tables(self, min_voxels: int) -> None:
        """Nested cumulative weights: modality -> dataset -> case -> label."""
        tree: dict = {}
        self.labels: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # case number -> (ids, cum weights)
        for n, (_, case) in enumerate(self.cases):
            ids = np.asarray(case.label_ids)
            big_enough = np.asarray(case.label_counts) >= min_voxels
            w = np.array([self._weight(f"{case.name}:{i}") for i in ids]) * big_enough
            cw = self._weight(case.name)
            if w.sum() <= 0 or cw <= 0:
                continue
            self.labels[n] = (ids, np.cumsum(w) / w.sum())
            tree.setdefault(case.modality, {}).setdefault(case.dataset, []).append((n, cw))
        self.tree = []  # [(modality, cum, [(dataset, cum, case numbers, case cum)])]
        mod_w = []
        for modality in sorted(tree):
            dsets, ds_w = [], []
            for dataset in sorted(tree[modality]):
                members = tree[modality][dataset]
                w = self._weight(dataset, f"{modality}/{dataset}")
                if w <= 0:
                    continue
                cw = np.array([c for _, c in members])
                dsets.append((dataset, np.array([n for n, _ in members]), np.cumsum(cw) / cw.sum()))
                ds_w.append(w)
            w = self._weight(modality)
            if dsets and w > 0:
                self.tree.append((modality, np.cumsum(ds_w) / np.sum(ds_w), dsets))
                mod_w.append(w)
        if not self.tree:
            raise ValueError("no usable labelled case in " + ", ".join(str(i.root) for i in self.indexes))
        self.modality_cum = np.cumsum(mod_w) / np.sum(mod_w)

    @property
    def modalities(self) -> list[str]:
        return [m for m, _, _ in self.tree]

    def __len__(self) -> int:
        return len(self.labels)

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """(case number, label id): modality, dataset, case, label in turn."""
        u = rng.random(4)
        _, ds_cum, dsets = self.tree[_pick(self.modality_cum, u[0])]
        _, members, case_cum = dsets[_pick(ds_cum, u[1])]
        n = int(members[_pick(case_cum, u[2])])
        ids, label_cum = self.labels[n]
        return n, int(ids[_pick(label_cum, u[3])])

    # ------------------------------------------------------------------ arrays and crops
    def arrays(self, n: int):
        """(image uint8, labels) of case n: memory-mapped cache arrays (written now if absent),
        or the decompressed npz without the cache."""
        index, case = self.cases[n]
        if not self.cache:
            return _read_arrays(index.path(case))
        if n in self._open:
            self._open.move_to_end(n)
            return self._open[n]
        img_path, gts_path = index.array_paths(case)
        if not (img_path.exists() and gts_path.exists()):
            image, labels = _read_arrays(index.path(case))
            _save_npy(img_path, image)
            _save_npy(gts_path, labels)
        pair = (np.load(img_path, mmap_mode="r"), np.load(gts_path, mmap_mode="r"))
        self._open[n] = pair
        while len(self._open) > MAX_OPEN:
            self._open.popitem(last=False)
        return pair

    def case(self, n: int, label: int) -> SynthCase:
        """Case n cropped around `label`, relabelled so that `label` is 1 (see module doc)."""
        info = self.cases[n][1]
        pos = info.label_ids.index(label)
        window = crop_window(info.label_boxes[pos], info.shape, self.margin, self.min_margin)
        spacing = np.asarray(info.spacing, float)
        stride = thinning([s.stop - s.start for s in window], spacing, self.max_voxels)
        thin = tuple(slice(s.start, s.stop, int(k)) for s, k in zip(window, stride))
        image_src, labels_src = self.arrays(n)
        crop = np.array(labels_src[thin])
        if stride.max() > 1 and not (crop == label).any():  # thinned the object away: keep full resolution
            stride, thin = np.ones(3, int), window
            crop = np.array(labels_src[thin])
        image = np.array(image_src[thin])
        labels = self._relabel(crop, label, info, window) if self.keep_others else (crop == label).astype(np.uint8)
        out = SynthCase(image, labels, spacing * stride, info.look, info.no_box)
        out.source, out.label_id, out.stride = info.name, label, tuple(int(k) for k in stride)
        out.origin = tuple(s.start for s in window)
        return out

    @staticmethod
    def _relabel(crop: np.ndarray, label: int, info: CaseInfo, window) -> np.ndarray:
        """Chosen label -> 1, other labels whose box meets the window -> 2.. (cap 255), contiguous."""
        boxes = np.asarray(info.label_boxes).reshape(-1, 6)
        lo = np.array([s.start for s in window])
        hi = np.array([s.stop for s in window])
        ids = np.asarray(info.label_ids)
        meets = np.all(boxes[:, :3] < hi, axis=1) & np.all(boxes[:, 3:] > lo, axis=1) & (ids != label)
        others = ids[meets]
        if len(others) == 0:
            return (crop == label).view(np.uint8)
        if ids.max() < 2**20:
            lut = np.zeros(int(ids.max()) + 1, np.uint8)
            lut[others] = np.minimum(np.arange(len(others)) + 2, 255)
            lut[label] = 1
            out = np.take(lut, crop)  # about twice as fast as lut[crop]
        else:  # huge sparse ids (uint32): no lookup table
            out = np.zeros(crop.shape, np.uint8)
            out[crop == label] = 1
            for k, i in enumerate(others[:254]):
                out[crop == i] = k + 2
            out[(crop != 0) & (out == 0) & np.isin(crop, others[254:])] = 255
        present = np.bincount(out.ravel(), minlength=256) > 0
        present[0] = present[1] = True
        if not present[: len(others) + 2].all():  # some box met the window but no voxel did: close the gaps
            compact = np.zeros(256, np.uint8)
            compact[present] = np.arange(present.sum())
            out = compact[out]
        return out

    def sample(self, seed: int, rank: int, k: int) -> SynthCase:
        """Sample k of rank r's stream: a pure function of (seed, rank, k). A case that fails
        to read (changed since the index) is reported in one line and redrawn."""
        for attempt in range(8):
            rng = np.random.default_rng([seed, rank, k, attempt] if attempt else [seed, rank, k])
            n, label = self.draw(rng)
            try:
                return self.case(n, label)
            except (BadCase, OSError, ValueError, EOFError) as e:
                print(f"data: {self.cases[n][1].rel}: {e}; drawing another", file=sys.stderr, flush=True)
        raise RuntimeError("data: 8 draws in a row failed to read")

    def stream(self, seed: int = 0, rank: int = 0, start: int = 0, workers: int = 0,
               prefetch: int = 4) -> CaseStream:
        return CaseStream(self, seed, rank, start, workers, prefetch)

    def prepare_cache(self) -> int:
        """Write the cache arrays of every case now (in this process); returns how many were written."""
        written = 0
        for n, (index, case) in enumerate(self.cases):
            if not all(p.exists() for p in index.array_paths(case)):
                self.arrays(n)
                written += 1
        self._open.clear()
        return written

    def describe(self) -> str:
        """Cases, labels and the sampling probability of every modality and dataset."""
        mod_p = np.diff(self.modality_cum, prepend=0.0)
        labels = sum(len(ids) for ids, _ in self.labels.values())
        lines = [f"{len(self.labels)} cases, {labels} labels drawable; {self.bad} bad files skipped, "
                 + f"{self.duplicates} duplicate names ignored; cache {self.cache}"]
        for (modality, ds_cum, dsets), p in zip(self.tree, mod_p):
            ds_p = np.diff(ds_cum, prepend=0.0)
            parts = ", ".join(f"{d} {len(m)} cases p={q:.2f}" for (d, m, _), q in zip(dsets, ds_p))
            lines.append(f"  {modality} p={p:.2f}: {parts}")
        return "\n".join(lines)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state


def _pick(cum: np.ndarray, u: float) -> int:
    return min(int(np.searchsorted(cum, u, side="right")), len(cum) - 1)


def _read_arrays(path: Path):
    """The decompressed image (uint8, as the index converts it) and labels of one file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            image, gts = npz["imgs"], npz["gts"]
    except Exception as e:  # noqa: BLE001 (changed or broken since indexed: reported, redrawn)
        raise BadCase(f"unreadable ({type(e).__name__})") from None
    return to_uint8(image)[0], _labels_integer(gts)


class _Samples:
    """Map-style dataset over the infinite stream of one rank (index = sample number)."""

    def __init__(self, data: LabelledData, seed: int, rank: int):
        self.data, self.seed, self.rank = data, seed, rank

    def __getitem__(self, k: int) -> SynthCase:
        return self.data.sample(self.seed, self.rank, k)


def _keep(sample):
    return sample


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


class CaseStream:
    """An endless iterator of SynthCase samples k = start, start+1, ... of (seed, rank).

    workers=0 reads in this process; workers>0 reads ahead in DataLoader worker processes
    (`prefetch` samples each). state_dict() -> {"seed", "next"}: resume with start=next.
    """

    def __init__(self, data: LabelledData, seed: int, rank: int = 0, start: int = 0, workers: int = 0,
                 prefetch: int = 4):
        self.data, self.seed, self.rank, self.next = data, int(seed), int(rank), int(start)
        self._loader = self._it = None
        if workers > 0:
            from torch.utils.data import DataLoader

            self._loader = DataLoader(_Samples(data, self.seed, self.rank), batch_size=None,
                                      sampler=itertools.count(self.next), num_workers=workers,
                                      prefetch_factor=prefetch, collate_fn=_keep, worker_init_fn=_worker_init)
            self._it = iter(self._loader)

    def __iter__(self):
        return self

    def __next__(self) -> SynthCase:
        sample = next(self._it) if self._it is not None else self.data.sample(self.seed, self.rank, self.next)
        self.next += 1
        return sample

    def state_dict(self) -> dict:
        return {"seed": self.seed, "next": self.next}

    def close(self) -> None:
        """Stop the workers (also done when the stream is garbage-collected)."""
        self._it = self._loader = None  # the DataLoader iterator shuts its workers down when dropped

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def resume_start(states: list[dict] | dict | None, rank: int) -> int:
    """Where rank `rank` resumes from saved stream states (one per old rank, or one dict):
    its own `next` if it existed, else the furthest one (a new rank's stream is fresh anyway)."""
    if not states:
        return 0
    if isinstance(states, dict):
        return int(states["next"])
    return int(states[rank]["next"] if rank < len(states) else max(s["next"] for s in states))


__all__ = ["BUNDLED_SPLIT", "CaseStream", "LabelledData", "bundled_folders", "crop_window", "parse_weights",
           "read_case", "read_split", "resume_start", "split_of", "thinning"]
