"""Issue 15: a run whose file came from the entrypoint's salvage is recorded as such, not as a normal result."""

from pathlib import Path

import numpy as np
import pytest

from harness import loop, report
from harness.loop import ProcessPredictor, iteration_input, run_case, salvage_kind
from harness.official import boxes_from_labels
from tests.test_harness_loop import synthetic


def test_salvage_kind_reads_the_entrypoint_lines():
    normal = ("app: c: K=2 iteration=0 shape=(4, 4, 4) deadline=27.0s\n"
              "app: c: K=2 iteration=0 engine=app.engine:run 1.2s -> o")
    assert salvage_kind(normal) is None and salvage_kind("") is None and salvage_kind(None) is None
    deadline = "app: c: K=2 iteration=3 engine=deadline reached: partial result + fallback 12.1s -> o"
    assert salvage_kind(deadline) == "deadline"
    failed = "app: c: K=2 iteration=0 engine=harness.classical:run failed -> fallback 0.8s -> o"
    assert salvage_kind(failed) == "engine failed"
    assert salvage_kind("app: engine x:y unavailable (ImportError: no): using the fallback engine") == "fallback engine"


@pytest.mark.parametrize(("engine", "deadline", "kind"), [("sleep_forever", "1.5", "deadline"),
                                                          ("fail", "60", "engine failed"),
                                                          ("all_ones", "60", None)])
def test_process_predictor_reports_the_salvage_of_a_real_run(tmp_path, monkeypatch, engine, deadline, kind):
    """Through predict.sh: the watchdog's output at the deadline exists and is valid, and only
    its stderr tells it from the engine's own result."""
    case = synthetic()
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    arrays = iteration_input(case, boxes_from_labels(case.gts), None, None, None)
    np.savez_compressed(in_dir / f"{case.name}.npz", **arrays)
    monkeypatch.setenv("SEGFM_DEADLINE_S", deadline)
    notes = ProcessPredictor(engine=f"tests.engines:{engine}", timeout=60)(in_dir, out_dir)
    segs, flag = loop.read_output(out_dir / f"{case.name}.npz", case.gts.shape)
    assert flag is None and segs.any()
    assert notes == {"salvage": kind}


def test_salvage_is_recorded_per_iteration_and_shown_in_the_report():
    case = synthetic()
    calls = []

    def late_sometimes(input_dir: Path, output_dir: Path) -> dict:
        calls.append(1)
        np.savez(output_dir / f"{case.name}.npz", segs=case.gts)
        return {"salvage": "deadline" if len(calls) in (1, 4) else None}

    record, _ = run_case(case, late_sometimes, True)
    assert [r["salvage"] for r in record["iterations"]] == ["deadline", None, None, "deadline", None, None]
    assert all(r["flag"] is None and r["dsc"] == 1.0 for r in record["iterations"])
    record = {**record, "predictor": "engine", "path": "x", "preds": "y"}
    summary = report.summary_markdown([record])
    assert "salvaged at it 0 (deadline), 3 (deadline)" in summary
    assert "fallback after an engine failure): engine 2/6" in summary
