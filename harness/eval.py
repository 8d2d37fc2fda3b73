"""`python -m harness.eval`: replay the official loop for predictors x cases x modes, then report.

Every predictor runs through predict.sh in a fresh process (SEGFM_ENGINE picks the function),
so the engine and the baselines are timed the same way. Examples:
    python -m harness.eval                                  # all predictors, all labelled cases
    python -m harness.eval --predictor classical --cases MR_PyRadiomics_brain2 --both-modes
    python -m harness.eval --shard 0/2 --out reports/eval/s0; python -m harness.merge reports/eval/s*
    python -m harness.valset && python -m harness.eval --data reports/valset --predictor classical,boxfill
    python -m harness.eval --data reports/valset --predictor engine --in-process   # tuning: no process starts

A data folder may hold a tasks.json (harness.valset writes one): its cases run in their declared
box mode, and their records carry each class's name and task type for the per-task tables.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

from app.__main__ import DEFAULT_ENGINE
from harness import loop, report
from harness.official import BOX_SEED

PREDICTORS = {
    "engine": None,  # whatever the entrypoint runs by default
    "boxfill": "harness.baselines:boxfill",
    "boxfill_clicks": "harness.baselines:boxfill_clicks",
    "classical": "harness.classical:run",
}
DATA_DIRS = [loop.REPO / "tests/data/labelled", loop.REPO.parent / "shared/samples/labelled"]


def find_cases(dirs: list[Path], names: list[str] | None) -> list[Path]:
    """Labelled npz files, first directory wins on duplicate names, optionally filtered by name."""
    found = {}
    for d in dirs:
        for path in sorted(Path(d).glob("*.npz")):
            found.setdefault(path.stem, path)
    if names:
        missing = set(names) - set(found)
        if missing:
            raise SystemExit(f"unknown cases: {sorted(missing)} (have {sorted(found)})")
        found = {n: p for n, p in found.items() if n in names}
    return [found[n] for n in sorted(found)]


def declared_cases(data: Path, names: list[str] | None = None, box: bool | None = None):
    """(case, box mode) of a data folder's cases in their declared modes (tasks.json, else by
    name), loaded one at a time; `box`: only the cases of that mode (harness.paired, harness.compare)."""
    tasks = loop.load_tasks(data)
    for path in find_cases([data], names):
        mode = loop.default_box_mode(path.stem, tasks)
        if box is None or mode == box:
            yield loop.load_labelled(path), mode


def jobs_for(cases: list[Path], predictors: list[str], no_box: bool, both: bool) -> list[tuple]:
    """(case path, box mode, predictor) in a fixed order, so shards are stable."""
    jobs = []
    tasks = {folder: loop.load_tasks(folder) for folder in {Path(p).parent for p in cases}}
    for path in cases:
        auto = loop.default_box_mode(path.stem, tasks[Path(path).parent]) and not no_box
        modes = [True, False] if both and auto else [auto]
        jobs += [(path, box, name) for box in modes for name in predictors]
    return jobs


def run_job(job: tuple, out: Path, container: str | None, timeout: float, in_process: bool = False,
            box_seed: int = BOX_SEED) -> dict:
    path, box_mode, name = job
    start = time.perf_counter()
    engine = PREDICTORS.get(name, name)  # a 'module:function' name runs that function
    case = loop.load_labelled(path)
    classes = loop.load_tasks(Path(path).parent).get(case.name, {}).get("classes")
    if in_process:
        predictor = loop.InProcessPredictor(resolve(engine or DEFAULT_ENGINE))
    else:
        predictor = loop.ProcessPredictor(engine=engine, container=container, timeout=timeout)
    mode = "box" if box_mode else "no-box"
    record, preds = loop.run_case(case, predictor, box_mode, label=f"{case.name} {name} {mode}", box_seed=box_seed)
    pred_path = (out / "preds" / f"{case.name}__{mode}__{name.replace(':', '.')}.npz").resolve()
    pred_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(pred_path, final=preds[max(preds)], first=preds[min(preds)])
    typed = {}
    if classes and len(classes) == case.num_classes:
        typed = {"task_types": [c["task"] for c in classes], "class_names": [c["name"] for c in classes]}
    return {**record, **typed, "predictor": name, "path": str(Path(path).resolve()), "preds": str(pred_path),
            "wall_s": time.perf_counter() - start}


def resolve(name: str):
    """'module:function' -> the function. Unlike the entrypoint's loader, a failed import raises:
    a tuning run must not score the fallback engine in the engine's place."""
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


def _run_job(args) -> dict:
    return run_job(*args)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictor", default="engine,boxfill,boxfill_clicks,classical",
                    help=f"comma list of {list(PREDICTORS)} or module:function")
    ap.add_argument("--cases", help="comma list of case names (file stems); default all")
    ap.add_argument("--data", nargs="+", type=Path, default=DATA_DIRS, help="folders of labelled npz")
    modes = ap.add_mutually_exclusive_group()
    modes.add_argument("--no-box", action="store_true", help="run every case without boxes")
    modes.add_argument("--both-modes", action="store_true", help="box cases also run without boxes")
    ap.add_argument("--container", help="run this image with podman instead of predict.sh (engine only)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before it counts as failed")
    ap.add_argument("--shard", default="0/1", help="i/n: run every n-th job starting at i")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--in-process", action="store_true",
                    help="call the predictor in this process without a deadline (quick tuning; no timing, no watchdog)")
    ap.add_argument("--box-seed", type=int, default=BOX_SEED,
                    help="seed of the boxes' random widening (the organisers' is 2025; others test rules tuned on it)")
    ap.add_argument("--out", type=Path, default=loop.REPO / "reports/eval")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    predictors = args.predictor.split(",")
    cases = find_cases(args.data, args.cases.split(",") if args.cases else None)
    index, count = (int(v) for v in args.shard.split("/"))
    jobs = jobs_for(cases, predictors, args.no_box, args.both_modes)[index::count]
    print(f"{len(jobs)} jobs: {len(cases)} cases x {predictors}", file=sys.stderr, flush=True)
    tasks = [(job, args.out, args.container, args.timeout, args.in_process, args.box_seed) for job in jobs]
    if args.workers > 1:
        with multiprocessing.Pool(args.workers) as pool:
            records = list(pool.imap_unordered(_run_job, tasks))
    else:
        records = [_run_job(t) for t in tasks]
    print(report.write(records, args.out))


if __name__ == "__main__":
    main()
