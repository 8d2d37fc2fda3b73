"""Per-class scores and the per-task-type tables, on hand-made records."""

import numpy as np
import pytest

from harness import metrics, report


def iteration(it, dsc, nsd=None):
    nsd = nsd or dsc
    return {"iteration": it, "seconds": 1.0, "flag": None, "salvage": None, "dsc": float(np.mean(dsc)),
            "dsc_per_class": list(dsc), "nsd": float(np.mean(nsd)), "nsd_per_class": list(nsd),
            "nsd_corrected": float(np.mean(nsd)), "nsd_corrected_per_class": list(nsd)}


def record(case, predictor, dsc_by_it, order, types, mode="box"):
    """dsc_by_it: {iteration: [per-class DSC]}; order: per class, the clicks_order row."""
    its = [iteration(i, d) for i, d in sorted(dsc_by_it.items())]
    k = len(types)
    return {"case": case, "mode": mode, "predictor": predictor, "num_classes": k, "shape": [2, 2, 2],
            "iterations": its, "clicks_order": order, "task_types": types,
            "class_names": [f"c{i}" for i in range(k)], **metrics.summarise(its, k)}


def test_per_class_matches_summarise_for_one_class():
    its = [iteration(i, [v]) for i, v in enumerate([0.5, 0.6, 0.7, 0.7, 0.8, 0.9])]
    (one,) = metrics.per_class(its, 1)
    case = metrics.summarise(its, 1)
    assert one["dsc_iter0"] == case["dsc_iter0"] == 0.5
    assert one["dsc_auc"] == pytest.approx(case["dsc_auc"]) and one["dsc_final"] == case["dsc_final"] == 0.9
    assert one["nsd_final"] == case["nsd_final"]


def test_task_table_averages_over_the_classes_of_each_type():
    fg = ["fg"] * 5
    # case A: an organ (class 1) and a lesion (class 2); the lesion's click at it 2 lowers its DSC
    a = record("CT_a", "p", {0: [0.8, 0.2], 1: [0.9, 0.4], 2: [0.9, 0.3], 3: [0.9, 0.5], 4: [0.9, 0.5], 5: [1.0, 0.6]},
               [[None, None, None, None, "fg"], fg], ["organ", "lesion"])
    # case B: one organ, every click helps
    b = record("MR_b", "p", {0: [0.4], 1: [0.5], 2: [0.6], 3: [0.7], 4: [0.8], 5: [0.9]}, [fg], ["organ"])
    rows = report.class_rows([a, b])
    assert [(r["case"], r["task"], r["name"]) for r in rows] == [("CT_a", "organ", "c0"), ("CT_a", "lesion", "c1"),
                                                                 ("MR_b", "organ", "c0")]
    lesion = rows[1]
    assert lesion["clicks"] == 5 and lesion["clicks_lowering"] == 1
    assert lesion["dsc_gain_per_click"] == pytest.approx((0.6 - 0.2) / 5)
    table = report.task_table(rows, {"p": 0})
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert list(lines) == ["organ", "lesion"]  # TASK_ORDER, not alphabetical
    organ = [cell.strip() for cell in lines["organ"].strip("|").split("|")]
    # organ: classes A/1 and B/1; DSC it0 (0.8 + 0.4) / 2, Final (1.0 + 0.9) / 2; clicks 1 + 5, none lowering
    assert organ[:4] == ["organ", "box", "p", "2 (2)"]
    assert float(organ[4]) == pytest.approx(0.6) and float(organ[6]) == pytest.approx(0.95)
    assert organ[8] == "0/6" and float(organ[9]) == pytest.approx((0.1 + 0.5) / 6, abs=1e-3)
    summary = report.summary_markdown([a, b])
    assert "## Per task type" in summary and "| lesion | box | p | 1 (1) | 0.200 |" in summary
    scores = {s["task"]: s for s in report.task_scores(rows)}  # scores.json, the manifest's scores
    assert scores["organ"]["dsc_final"] == pytest.approx(0.95) and scores["organ"]["clicks"] == 6
    assert scores["lesion"]["clicks_lowering"] == 1


def test_records_without_task_types_give_no_task_section():
    rec = record("CT_a", "p", {i: [0.5] for i in range(6)}, [["fg"] * 5], ["organ"])
    del rec["task_types"], rec["class_names"]
    assert report.class_rows([rec])[0]["task"] == "untyped"
    assert "## Per task type" not in report.summary_markdown([rec])


def test_no_box_records_skip_the_first_click():
    rec = record("Microscopy_x", "p", {1: [0.3], 2: [0.2], 3: [0.5], 4: [0.5], 5: [0.6]}, [["fg"] * 5],
                 ["instance"], mode="no-box")
    (row,) = report.class_rows([rec])
    assert row["dsc_iter0"] is None and row["clicks"] == 4 and row["clicks_lowering"] == 1
    assert report.clicks_that_lowered_dsc([rec]) == {("no-box", "p"): (1, 4)}
