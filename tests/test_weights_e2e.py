"""The shipped weights end to end (issue 10 item 14): every other entrypoint test uses the
fallback engine, so without this a broken weights file would pass `make test`.

predict.sh with the real engine on the bundled held-out ICBM case (box iteration; truth = the
labelled file's gts) must beat box fill on the same case by MARGIN in mean DSC. Measured at
step 3314 on 2 CPU cores: engine 0.256, box fill 0.120, randomly initialised weights 0.101.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from app.io import load_case
from harness.baselines import boxfill
from harness.metrics import dsc
from tests.npzcase import REPO

WEIGHTS = REPO / "weights"
CASE = "MR_ICBM152_tissue.npz"
MARGIN = 0.08


def mean_dsc(segs: np.ndarray, gts: np.ndarray) -> float:
    return float(np.mean([dsc(segs == label, gts == label) for label in np.unique(gts)[1:]]))


@pytest.mark.skipif(not (WEIGHTS / "global_expert.pt").exists(), reason="weights/global_expert.pt absent")
def test_shipped_weights_beat_box_fill(tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    shutil.copy(REPO / "tests/data/inputs" / CASE, in_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGFM_")}  # the shipped defaults
    env |= {"INPUT_DIR": str(in_dir), "OUTPUT_DIR": str(out_dir), "SEGFM_WEIGHTS": str(WEIGHTS),
            "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(["sh", str(REPO / "predict.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "engine=app.engine:run " in result.stderr and "failed" not in result.stderr, result.stderr

    with np.load(REPO / "tests/data/labelled" / CASE) as npz:
        gts = npz["gts"]
    with np.load(out_dir / CASE) as npz:
        engine = mean_dsc(npz["segs"], gts)
    baseline = mean_dsc(boxfill(load_case(in_dir / CASE)), gts)
    assert engine > baseline + MARGIN, f"engine DSC {engine:.3f}, box fill {baseline:.3f}"
