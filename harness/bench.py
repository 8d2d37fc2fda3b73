"""`make bench`: speed and memory of the entrypoint, one fresh process per case, as the organisers run it.

    python -m harness.bench [--no-large] [--no-clicks] [--repeat N]

Prints: case, K, shape, start-up s (interpreter + imports + weights, measured by a separate
probe), per-class s (mean of the engine's per-class times over the classes it ran), total s
(process wall time), peak RSS, the share of the per-run budget (15 s x K) used, and for each
click-iteration row "click/box per class": its per-class s over that of the same case's box row.
With --repeat N every row is run N times and shows the minimum of each time (the maximum RSS),
a case's box and click runs alternating: on a busy machine torch's threads stall now and then (a
class's pass then takes up to ~10x longer), and the minimum is what the code costs.

Box cases, each with a box row (iteration 0) and a "click 5" row: the real AMOS CT sample (when
../shared is present), the ICBM tissue case, a synthetic chest-like CT (34 x 128 x 128, 7 classes,
spacing 10 x 1.5 x 1.5 mm, training.synth.organ_scene + render, seed 98), a 1-voxel image with a
box, and a synthetic 100-class 300 x 512 x 512 case for the memory target (skipped by --no-large).
Besides: the organisers' own ICBM click-1 sample and a no-box first click (breast lesion).

The click-5 input is built as the organisers would: the box row's output is iteration 0's
prediction; iterations 1..4 are replayed with the engine in this process (harness.official.add_clicks
against the truth, then the engine on harness.loop.iteration_input's file), and the 5th round of
clicks with prev_pred = the engine's output of iteration 4 is the measured run. The truth is the
case's ground truth where it has one (ICBM, the synthetic CT). AMOS, the 1-voxel image and the
100-class case have none: there the stand-in truth is the box row's output with every class
eroded by 2 voxels in-plane (`stand_in_truth`), so the clicks correct over-segmentation (mostly bg
clicks); a class whose error vanishes gets a None click and is kept, not run, by the engine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from harness.loop import CLICK_ITERATIONS, InProcessPredictor, LabelledCase, iteration_input, read_output
from harness.official import add_clicks, error_click

ROOT = Path(__file__).resolve().parents[1]
AMOS = ROOT.parent / "shared" / "samples" / "inputs" / "CT_AMOS_amos_0018.npz"
ICBM_BOX = ROOT / "tests/data/inputs/MR_ICBM152_tissue.npz"
ICBM_GTS = ROOT / "tests/data/labelled/MR_ICBM152_tissue.npz"
CHEST_SEED = 98  # training.synth v4's organ_scene draws 7 classes (74..5436 voxels) with this seed on this grid
CHEST_SHAPE, CHEST_SPACING = (34, 128, 128), np.array([10.0, 1.5, 1.5])  # (z, y, x) mm


@dataclass
class BoxCase:
    path: Path               # the iteration-0 input, organiser format
    gts: Path | None = None  # npz with the ground truth (`gts`) for the clicks; None: stand-in truth


# Starts `python -m app` and reports its wall time and peak RSS. The bench process holds torch
# and the engine (the replay below): a child forked from it would report the bench's own RSS as
# its peak (Linux keeps the larger of the pre-exec and post-exec high-water marks), so the app
# is forked from this small interpreter instead.
LAUNCHER = """
import os, subprocess, sys, time
start = time.monotonic()
proc = subprocess.Popen([sys.executable, "-m", "app"], stdout=subprocess.DEVNULL)
_, _, usage = os.wait4(proc.pid, 0)
print(time.monotonic() - start, usage.ru_maxrss)
"""


def run_once(path: Path) -> tuple[float, float, str, np.ndarray]:
    """One fresh `python -m app` on the single file `path`: wall s, peak RSS GB, stderr, segs."""
    with np.load(path, allow_pickle=True) as data:
        shape = data["imgs"].shape
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp, "in"), Path(tmp, "out")
        inp.mkdir()
        out.mkdir()
        (inp / path.name).symlink_to(path.resolve())
        env = {**os.environ, "INPUT_DIR": str(inp), "OUTPUT_DIR": str(out), "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", LAUNCHER], cwd=ROOT, env=env, capture_output=True, text=True,
                              check=True)
        wall, maxrss = (float(v) for v in done.stdout.split())
        with np.load(out / path.name) as result:
            segs = result["segs"]
            assert segs.shape == shape and segs.dtype == np.uint8
    return wall, maxrss / 2**20, done.stderr, segs


def num_classes(path: Path) -> int:
    with np.load(path, allow_pickle=True) as data:
        return len(data["boxes"]) if "boxes" in data else len(data["clicks"])


def summarise(path: Path, runs: list[tuple], label: str | None = None) -> dict:
    """A row from `run_once` results on `path`: the minimum of each time column, the maximum peak
    RSS; the record holds the output (`segs`) of the last run."""
    k = num_classes(path)
    walls, per_class = [run[0] for run in runs], []
    for _, _, err, _ in runs:
        times = [float(t) for t in re.findall(r"class \d+ \S+ ([\d.]+)s", err)]
        if times:
            per_class.append(float(np.mean(times)))
    segs = runs[-1][3]
    return {"case": label or path.stem, "K": k, "shape": "x".join(map(str, segs.shape)), "total_s": min(walls),
            "per_class_s": min(per_class, default=float("nan")), "peak_rss_gb": max(run[1] for run in runs),
            "budget_share": min(walls) / (15.0 * k), "segs": segs,
            "fell_back": any("fall back" in err or "deadline reached" in err for _, _, err, _ in runs)}


def run_case(path: Path, label: str | None = None, repeat: int = 1) -> dict:
    """`repeat` fresh runs on `path`, as one row."""
    return summarise(path, [run_once(path) for _ in range(repeat)], label)


def startup_seconds() -> float:
    """Interpreter start, imports and weight loading: what every one of the six runs pays."""
    probe = "from app.experts import load_experts; load_experts()"
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.monotonic() - start


def no_box_case(tmp: Path) -> Path:
    """The breast lesion as a no-box first click: zero prev_pred, one fg click at the lesion's centre."""
    with np.load(ROOT / "tests/data/labelled/MR_PyRadiomics_breast1.npz") as data:
        image, gts, spacing = data["imgs"], data["gts"], data["spacing"]
    zyx, _ = error_click(np.zeros_like(gts, bool), gts == 1)
    clicks = np.empty(1, object)
    clicks[0] = {"fg": [list(zyx)], "bg": []}
    path = tmp / "MR_breast1_nobox_click1.npz"
    np.savez_compressed(path, imgs=image, spacing=spacing, clicks=clicks, clicks_order=np.array([["fg"]]),
                        prev_pred=np.zeros_like(image))
    return path


def box_dict(lo, hi) -> dict:
    """An organiser-style box from inclusive (z, y, x) bounds, z_mid the middle of the z range."""
    return {"z_min": int(lo[0]), "z_max": int(hi[0]), "z_mid": (int(lo[0]) + int(hi[0])) // 2,
            "z_mid_x_min": int(lo[2]), "z_mid_y_min": int(lo[1]), "z_mid_x_max": int(hi[2]), "z_mid_y_max": int(hi[1])}


def many_class_case(tmp: Path, k: int = 100, shape=(300, 512, 512)) -> Path:
    """A large synthetic box iteration: k boxes of mixed sizes on a noise image."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, shape, dtype=np.uint8)
    boxes = np.empty(k, object)
    for c in range(k):
        size = rng.integers(8, 120, 3)
        lo = [int(rng.integers(0, n - s)) for n, s in zip(shape, size)]
        boxes[c] = box_dict(lo, [a + int(s) - 1 for a, s in zip(lo, size)])
    path = tmp / f"Synthetic_{k}classes.npz"
    np.savez_compressed(path, imgs=image, spacing=np.array([0.8, 0.8, 1.5]), boxes=boxes)
    return path


def chest_ct_case(tmp: Path) -> BoxCase:
    """A synthetic chest-like CT, 34 x 128 x 128 at 10 x 1.5 x 1.5 mm, fixed seed (7 classes with synth v4):
    boxes from its labels the organisers' way, its labels kept as the truth for the clicks."""
    from harness.official import boxes_from_labels
    from training.synth import organ_scene, render

    rng = np.random.default_rng(CHEST_SEED)
    labels, body = organ_scene(rng, CHEST_SHAPE, CHEST_SPACING)
    image = render(rng, labels, body, CHEST_SPACING, "ct")
    spacing = CHEST_SPACING[::-1].copy()  # stored (x, y, z) order
    path, gts = tmp / "CT_synthetic_chest.npz", tmp / "CT_synthetic_chest_gts.npz"
    np.savez_compressed(path, imgs=image, spacing=spacing, boxes=boxes_from_labels(labels))
    np.savez_compressed(gts, gts=labels)
    return BoxCase(path, gts)


def one_voxel_case(tmp: Path) -> BoxCase:
    """A 1 x 1 x 1 image with one box covering it: what a run costs with nothing to compute."""
    path = tmp / "CT_one_voxel.npz"
    boxes = np.empty(1, object)
    boxes[0] = box_dict((0, 0, 0), (0, 0, 0))
    np.savez_compressed(path, imgs=np.full((1, 1, 1), 100, np.uint8), spacing=np.ones(3), boxes=boxes)
    return BoxCase(path)


def stand_in_truth(segs: np.ndarray, k: int, voxels: int = 2) -> np.ndarray:
    """A ground truth for a case without one: every class of `segs` (1..k) eroded `voxels` in-plane."""
    truth = np.zeros_like(segs)
    cross = ndimage.generate_binary_structure(2, 1)[None]
    for label, found in enumerate(ndimage.find_objects(segs, max_label=k), start=1):
        if found is None:
            continue
        pad = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in found)  # erosion sees the crop's border
        mask = segs[pad] == label
        eroded = ndimage.binary_erosion(mask, cross, iterations=voxels, border_value=0)
        truth[pad][eroded] = label
    return truth


def load_engine() -> Callable:
    """The shipped engine with its weights loaded once, for the in-process replay of iterations 1..4."""
    from functools import partial

    from app.engine import run
    from app.experts import load_experts

    return partial(run, experts=load_experts())


def click_input(box: Path, box_segs: np.ndarray, truth: np.ndarray, engine: Callable, tmp: Path,
                iteration: int = CLICK_ITERATIONS) -> Path:
    """The organisers' input of click `iteration` for a box case: iterations 1..iteration-1 are
    replayed with `engine` in this process (its log discarded), starting from `box_segs`."""
    with np.load(box, allow_pickle=True) as data:
        case = LabelledCase(box.stem, data["imgs"], truth, data["spacing"])
        boxes = data["boxes"]
    k = len(boxes)
    clicks, clicks_order = [{"fg": [], "bg": []} for _ in range(k)], [[] for _ in range(k)]
    predictor, segs = InProcessPredictor(engine), box_segs
    for it in range(1, iteration + 1):
        add_clicks(segs, truth, clicks, clicks_order)
        in_dir, out_dir = tmp / f"click{it}" / "in", tmp / f"click{it}" / "out"
        in_dir.mkdir(parents=True)
        out_dir.mkdir()
        path = in_dir / box.name
        np.savez_compressed(path, **iteration_input(case, boxes, clicks, clicks_order, segs))
        if it == iteration:
            return path
        with contextlib.redirect_stderr(io.StringIO()):
            predictor(in_dir, out_dir)
        segs, flag = read_output(out_dir / box.name, segs.shape)
        if flag:
            raise RuntimeError(f"{box.stem} click {it} (in-process replay): {flag}")
    raise ValueError("iteration must be >= 1")


def format_row(r: dict, startup: float, box: dict | None = None) -> str:
    flag = " (fallback used)" if r["fell_back"] else ""
    ratio = f"{r['per_class_s'] / box['per_class_s']:19.2f}" if box and box["per_class_s"] > 0 else " " * 19
    return (f"| {r['case'][:34]:34} | {r['K']:>3} | {r['shape']:13} | {startup:10.2f} | {r['per_class_s']:11.2f} "
            f"| {r['total_s']:7.1f} | {r['peak_rss_gb']:11.2f} | {100 * r['budget_share']:10.0f}%{flag} | {ratio} |")


HEADER = (f"| {'case':34} | {'K':>3} | {'shape':13} | start-up s | per-class s | total s | peak RSS GB | budget used "
          "| click/box per class |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-large", action="store_true", help="skip the 100-class 300x512x512 case")
    parser.add_argument("--no-clicks", action="store_true", help="box rows only (no in-process replay of clicks 1..4)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per row; the row shows each time's minimum (steadier on a busy machine)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        box_cases = [BoxCase(AMOS)] if AMOS.exists() else []
        box_cases += [BoxCase(ICBM_BOX, ICBM_GTS), chest_ct_case(tmp), one_voxel_case(tmp)]
        if not args.no_large:
            box_cases.append(BoxCase(many_class_case(tmp)))
        others = [(ROOT / "tests/data/inputs_iter/MR_ICBM152_tissue.npz", "MR_ICBM152_tissue click 1 (sample)"),
                  (no_box_case(tmp), None)]
        startup = startup_seconds()
        print(f"start-up (interpreter + imports + weights): {startup:.2f}s; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs", flush=True)
        print(HEADER)
        print("|" + "|".join("-" * (len(c)) for c in HEADER.split("|")[1:-1]) + "|", flush=True)
        engine = None
        for n, case in enumerate(box_cases):
            box_runs = [run_once(case.path)]
            if args.no_clicks:
                box_runs += [run_once(case.path) for _ in range(args.repeat - 1)]
                print(format_row(summarise(case.path, box_runs), startup), flush=True)
                continue
            if case.gts is not None:
                with np.load(case.gts) as data:
                    truth = data["gts"]
            else:
                truth = stand_in_truth(box_runs[0][3], num_classes(case.path))
            engine = engine or load_engine()
            path = click_input(case.path, box_runs[0][3], truth, engine, tmp / f"replay{n}")
            click_runs = [run_once(path)]
            for _ in range(args.repeat - 1):  # alternated, so both rows see the same spells of load
                box_runs.append(run_once(case.path))
                click_runs.append(run_once(path))
            box = summarise(case.path, box_runs)
            print(format_row(box, startup), flush=True)
            print(format_row(summarise(path, click_runs, f"{case.path.stem} click {CLICK_ITERATIONS}"), startup, box),
                  flush=True)
        for path, label in others:
            print(format_row(run_case(path, label, args.repeat), startup), flush=True)
        threads = os.environ.get("OMP_NUM_THREADS", "one per CPU (at most 8)")
        print(f"load average at the end {os.getloadavg()[0]:.1f}; torch threads per run: {threads} (other load on "
              "their cores stalls them: per-class times then rise several-fold)", flush=True)


if __name__ == "__main__":
    main()
