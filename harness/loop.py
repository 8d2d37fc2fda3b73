"""The official interaction loop replayed on labelled cases, one fresh predictor process per run.

Box mode: iteration 0 gets imgs, spacing and the organisers' boxes; clicks 1..5 follow, each
input holding the cumulative clicks, clicks_order and the predictor's previous output. No-box
mode skips iteration 0 and starts from an all-zero prev_pred with one click per class, as the
organisers do for microscopy. A missing or malformed output counts as all background and is
flagged, so one broken run is visible in the report instead of aborting the evaluation.
A run that wrote its file only through the entrypoint's salvage (the watchdog at the deadline,
or the fallback after an engine failure) is recorded as such (`salvage`), read from its stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.io import pack_text_prompts, read_text_prompts
from harness import metrics
from harness.official import BOX_SEED, add_clicks, boxes_from_labels

REPO = Path(__file__).resolve().parents[1]
CLICK_ITERATIONS = 5
NO_BOX_PREFIXES = ("Microscopy_",)
TASKS_FILE = "tasks.json"  # a data folder's case -> box mode and per-class task types (harness.valset)

# (input_dir, output_dir) -> None, or a dict of run notes ({"salvage": ...}); the loop times the call.
Predictor = Callable[[Path, Path], "dict | None"]

# What app/__main__.py prints when the output is not the engine's own result (its _summary and
# _load_engine lines); the first match names the kind of salvage.
SALVAGE_PATTERNS = (
    ("deadline", re.compile(r"engine=deadline reached")),
    ("engine failed", re.compile(r"engine=\S+ failed -> fallback")),
    ("fallback engine", re.compile(r"using the fallback engine")),
)


@dataclass
class LabelledCase:
    name: str
    imgs: np.ndarray
    gts: np.ndarray
    spacing: np.ndarray  # stored (x, y, z) order, as in the challenge files
    texts: dict[int, str] = field(default_factory=dict)  # text prompts per label, sent at iteration 0

    @property
    def num_classes(self) -> int:
        return int(self.gts.max())


def load_labelled(path: Path) -> LabelledCase:
    """A training-style npz (imgs, gts, spacing); labels must be 1..K as the organisers assume."""
    with np.load(path, allow_pickle=True) as data:
        case = LabelledCase(Path(path).stem, data["imgs"], data["gts"].astype(np.uint8), data["spacing"],
                            read_text_prompts(data["text_prompts"] if "text_prompts" in data.files else None))
    labels = np.unique(case.gts)
    if not np.array_equal(labels[labels > 0], np.arange(1, case.num_classes + 1)):
        raise ValueError(f"{path}: labels {labels.tolist()} are not contiguous 1..K")
    return case


def load_tasks(folder: Path) -> dict:
    """The `cases` of a data folder's tasks.json (case -> {"box": bool, "classes": [...]}), or {}."""
    path = Path(folder) / TASKS_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("cases", {})


def default_box_mode(name: str, tasks: dict | None = None) -> bool:
    """A case's declared mode (tasks.json `box`) when it has one, else by name: Microscopy_* runs without boxes."""
    declared = (tasks or {}).get(name, {}).get("box")
    if declared is not None:
        return bool(declared)
    return not name.startswith(NO_BOX_PREFIXES)


def salvage_kind(stderr: str) -> str | None:
    """'deadline' when the watchdog wrote the file at the deadline, 'engine failed' / 'fallback
    engine' when the entrypoint's fallback did, None for the engine's own result."""
    for kind, pattern in SALVAGE_PATTERNS:
        if pattern.search(stderr or ""):
            return kind
    return None


class ProcessPredictor:
    """Runs `sh predict.sh` (or the image, with podman) in a fresh process per iteration."""

    def __init__(self, engine: str | None = None, container: str | None = None, timeout: float = 3600.0):
        if container and engine:
            raise ValueError("the image ships app/ only: --container runs the engine, not harness baselines")
        self.engine, self.container, self.timeout = engine, container, timeout

    def command(self, input_dir: Path, output_dir: Path) -> tuple[list[str], dict]:
        env = {k: v for k, v in os.environ.items() if k != "SEGFM_ENGINE"}
        if self.container:
            return ["podman", "--runtime", "runc", "run", "--rm", "--network", "none", "-m", "32g",
                    "-v", f"{input_dir}:/workspace/inputs", "-v", f"{output_dir}:/workspace/outputs",
                    self.container, "/bin/bash", "-c", "sh predict.sh"], env
        # predict.sh runs `python`: make that the harness's own interpreter (the venv).
        path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(INPUT_DIR=str(input_dir), OUTPUT_DIR=str(output_dir), PATH=path)
        if self.engine:
            env["SEGFM_ENGINE"] = self.engine
        return ["sh", "predict.sh"], env

    def __call__(self, input_dir: Path, output_dir: Path) -> dict:
        cmd, env = self.command(input_dir, output_dir)
        try:
            done = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"timed out after {self.timeout:.0f} s") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"exit {done.returncode}: {' | '.join(tail)}")
        return {"salvage": salvage_kind(done.stderr)}


def read_output(path: Path, shape: tuple) -> tuple[np.ndarray, str | None]:
    """The prediction, or all background plus the reason when it is missing or malformed."""
    empty = np.zeros(shape, np.uint8)
    if not path.exists():
        return empty, "missing output"
    try:
        with np.load(path, allow_pickle=False) as data:
            if "segs" not in data.files:
                return empty, f"no 'segs' key ({data.files})"
            segs = data["segs"]
    except Exception as exc:  # noqa: BLE001 (a corrupt file is the predictor's failure, not the harness's)
        return empty, f"unreadable output: {exc}"
    if segs.shape != tuple(shape):
        return empty, f"shape {segs.shape} != {tuple(shape)}"
    if segs.dtype != np.uint8:
        return empty, f"dtype {segs.dtype} != uint8"
    return segs, None


def iteration_input(case: LabelledCase, boxes, clicks, clicks_order, prev_pred) -> dict:
    """The npz members the organisers write for one iteration (clicks None at iteration 0, the
    only one with text prompts)."""
    arrays = {"imgs": case.imgs, "spacing": case.spacing}
    if boxes is not None:
        arrays["boxes"] = boxes
    if clicks is None and case.texts:
        arrays["text_prompts"] = pack_text_prompts(case.texts)
    if clicks is not None:
        packed = np.empty(len(clicks), dtype=object)
        packed[:] = [{"fg": list(c["fg"]), "bg": list(c["bg"])} for c in clicks]
        has_none = any(kind is None for row in clicks_order for kind in row)
        arrays["clicks"] = packed
        arrays["clicks_order"] = np.array(clicks_order, dtype=object if has_none else None)
        arrays["prev_pred"] = prev_pred
    return arrays


def run_case(case: LabelledCase, predictor: Predictor, box_mode: bool, label: str = "",
             log=sys.stderr, box_seed: int = BOX_SEED, shadow: Predictor | None = None
             ) -> tuple[dict, dict[int, np.ndarray]]:
    """Replay the loop; returns the case record and the prediction of every iteration.
    `box_seed`: the seed of the boxes' random widening (the organisers': 2025). `shadow`: a
    second predictor given each iteration's same input, its output scored (DSC per class, in
    the record's "shadow") but never fed back: two engines compared on one trajectory."""
    boxes = boxes_from_labels(case.gts, box_seed) if box_mode else None
    clicks = [{"fg": [], "bg": []} for _ in range(case.num_classes)]
    clicks_order: list[list] = [[] for _ in range(case.num_classes)]
    records, preds, shadowed = [], {}, []
    segs = np.zeros(case.gts.shape, np.uint8)
    with tempfile.TemporaryDirectory(prefix="segfm-eval-") as tmp:
        for it in range(0 if box_mode else 1, CLICK_ITERATIONS + 1):
            if it > 0:
                add_clicks(segs, case.gts, clicks, clicks_order)
            in_dir, out_dir = Path(tmp, str(it), "inputs"), Path(tmp, str(it), "outputs")
            in_dir.mkdir(parents=True)
            out_dir.mkdir()
            arrays = iteration_input(case, boxes, clicks if it else None, clicks_order, segs)
            np.savez_compressed(in_dir / f"{case.name}.npz", **arrays)
            segs, flag, notes, seconds = run_predictor(predictor, in_dir, out_dir, case)
            salvage = notes.get("salvage") if isinstance(notes, dict) else None
            rec = {"iteration": it, "seconds": seconds, "flag": flag, "salvage": salvage,
                   **metrics.score(segs, case.gts, case.spacing)}
            records.append(rec)
            preds[it] = segs
            if shadow is not None:
                shadow_dir = Path(tmp, str(it), "shadow")
                shadow_dir.mkdir()
                other, shadow_flag, _, _ = run_predictor(shadow, in_dir, shadow_dir, case)
                shadowed.append({"iteration": it, "flag": shadow_flag, **metrics.dsc_scores(other, case.gts)})
            print(f"{label or case.name} it{it} {seconds:6.1f}s DSC {rec['dsc']:.3f}"
                  + (f"  [{flag}]" if flag else "") + (f"  [salvage: {salvage}]" if salvage else ""),
                  file=log, flush=True)
    record = {"case": case.name, "mode": "box" if box_mode else "no-box", "num_classes": case.num_classes,
              "shape": list(case.gts.shape), "spacing": [float(v) for v in case.spacing],
              "boxes": None if boxes is None else [{k: int(v) for k, v in b.items()} for b in boxes],
              "clicks": clicks, "clicks_order": clicks_order, "iterations": records,
              "per_class": metrics.per_class(records, case.num_classes),
              **metrics.summarise(records, case.num_classes)}
    if shadow is not None:
        record["shadow"] = shadowed
    return record, preds


def run_predictor(predictor: Predictor, in_dir: Path, out_dir: Path, case: LabelledCase
                  ) -> tuple[np.ndarray, str | None, dict | None, float]:
    """One run: its segmentation (all background when missing, malformed or crashed), the flag
    saying why, the predictor's notes and the seconds the predictor took."""
    start = time.perf_counter()
    notes, error = None, None
    try:
        notes = predictor(in_dir, out_dir)
    except Exception as exc:  # noqa: BLE001 (recorded, like a crashed container)
        error = str(exc)
    seconds = time.perf_counter() - start
    segs, flag = read_output(out_dir / f"{case.name}.npz", case.gts.shape)
    return segs, "; ".join(f for f in (error, flag) if f) or None, notes, seconds


class InProcessPredictor:
    """The engine function called directly (tests, quick tuning): same files, no process start."""

    def __init__(self, engine: Callable):
        self.engine = engine

    def __call__(self, input_dir: Path, output_dir: Path) -> None:
        from app.io import load_case, write_segs

        (path,) = input_dir.glob("*.npz")
        case = load_case(path)
        write_segs(output_dir / path.name, self.engine(case, None, float("inf")))


def print_box_scores(cases: Iterable[LabelledCase], detail: bool = False, predict=None) -> None:
    """Each case through the loop in box mode with the engine in-process (its log silenced), or
    with `predict` (a baseline's run function): a line per case (DSC it0, DSC_AUC, DSC_Final;
    `detail`: the shape and each class's DSC_AUC), then their mean. The small benchmarks beside
    the valset (harness.headct, harness.native, harness.brains)."""
    if predict is None:
        from app.engine import run as predict

    scores = []
    with open(os.devnull, "w") as quiet:
        for case in cases:
            record, _ = run_case(case, InProcessPredictor(predict), True, log=quiet)
            scores.append((record["iterations"][0]["dsc"], record["dsc_auc"], record["dsc_final"]))
            shape = f" {case.gts.shape}" if detail else ""
            per_class = " (per class DSC_AUC " + " ".join(f"{c['dsc_auc']:.3f}" for c in record["per_class"]) + ")"
            print(f"{case.name}{shape}: DSC it0 {scores[-1][0]:.3f} DSC_AUC {scores[-1][1]:.3f} "
                  f"DSC_Final {scores[-1][2]:.3f}{per_class if detail else ''}", flush=True)
    if scores:
        it0, auc, final = np.mean(scores, axis=0)
        print(f"mean of {len(scores)}: DSC it0 {it0:.3f} DSC_AUC {auc:.3f} DSC_Final {final:.3f}")
