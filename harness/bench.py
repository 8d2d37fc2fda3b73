"""`make bench`: speed and memory of the entrypoint, one fresh process per case, as the organisers run it.

    python -m harness.bench [--no-large]

Prints: case, K, shape, start-up s (interpreter + imports + weights, measured by a separate
probe), per-class s (from the engine's log), total s (process wall time), peak RSS, and the
share of the per-run budget (15 s x K) used. Cases: the real AMOS CT sample (box iteration,
when ../shared is present), the ICBM click iteration, a no-box first click, and a synthetic
100-class 300 x 512 x 512 case for the memory target.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.official import error_click

ROOT = Path(__file__).resolve().parents[1]
AMOS = ROOT.parent / "shared" / "samples" / "inputs" / "CT_AMOS_amos_0018.npz"


def run_case(path: Path) -> dict:
    with np.load(path, allow_pickle=True) as data:
        shape = data["imgs"].shape
        k = len(data["boxes"]) if "boxes" in data else len(data["clicks"])
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp, "in"), Path(tmp, "out")
        inp.mkdir()
        out.mkdir()
        (inp / path.name).symlink_to(path.resolve())
        env = {**os.environ, "INPUT_DIR": str(inp), "OUTPUT_DIR": str(out), "PYTHONPATH": str(ROOT)}
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        err = proc.stderr.read()
        _, _, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        with np.load(out / path.name) as result:
            assert result["segs"].shape == shape and result["segs"].dtype == np.uint8
    per_class = [float(t) for t in re.findall(r"class \d+ \S+ ([\d.]+)s", err)]
    return {"case": path.stem, "K": k, "shape": "x".join(map(str, shape)), "total_s": wall,
            "per_class_s": float(np.mean(per_class)) if per_class else float("nan"),
            "classes_run": len(per_class), "peak_rss_gb": usage.ru_maxrss / 2**20, "budget_share": wall / (15.0 * k),
            "fell_back": "fall back" in err or "deadline reached" in err}


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


def many_class_case(tmp: Path, k: int = 100, shape=(300, 512, 512)) -> Path:
    """A large synthetic box iteration: k boxes of mixed sizes on a noise image."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, shape, dtype=np.uint8)
    boxes = np.empty(k, object)
    for c in range(k):
        size = rng.integers(8, 120, 3)
        lo = [int(rng.integers(0, n - s)) for n, s in zip(shape, size)]
        hi = [a + int(s) - 1 for a, s in zip(lo, size)]
        boxes[c] = {"z_min": lo[0], "z_max": hi[0], "z_mid": (lo[0] + hi[0]) // 2, "z_mid_x_min": lo[2],
                    "z_mid_y_min": lo[1], "z_mid_x_max": hi[2], "z_mid_y_max": hi[1]}
    path = tmp / f"Synthetic_{k}classes.npz"
    np.savez_compressed(path, imgs=image, spacing=np.array([0.8, 0.8, 1.5]), boxes=boxes)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-large", action="store_true", help="skip the 100-class 300x512x512 case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = [AMOS] if AMOS.exists() else []
        cases += [ROOT / "tests/data/inputs_iter/MR_ICBM152_tissue.npz", ROOT / "tests/data/inputs/MR_ICBM152_tissue.npz",
                  no_box_case(Path(tmp))]
        if not args.no_large:
            cases.append(many_class_case(Path(tmp)))
        startup = startup_seconds()
        print(f"start-up (interpreter + imports + weights): {startup:.2f}s", flush=True)
        header = f"| {'case':32} | {'K':>3} | {'shape':13} | start-up s | per-class s | total s | peak RSS GB | budget used |"
        print(header)
        print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
        for path in cases:
            r = run_case(path)
            flag = " (fallback used)" if r["fell_back"] else ""
            print(f"| {r['case'][:32]:32} | {r['K']:>3} | {r['shape']:13} | {startup:10.2f} | {r['per_class_s']:11.2f} "
                  f"| {r['total_s']:7.1f} | {r['peak_rss_gb']:11.2f} | {100 * r['budget_share']:10.0f}%{flag} |", flush=True)


if __name__ == "__main__":
    main()
