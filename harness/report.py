"""Evaluation records -> results.json, results.csv, results_classes.csv, summary.md and figures.

A record is what harness.loop.run_case returns plus `predictor`, `path` (the labelled case)
and `preds` (an npz of the iteration-0 and final predictions), so a report can be rebuilt
from JSON alone (harness.merge does that for shards). Records of a data folder with a
tasks.json (harness.valset) also carry `task_types` and `class_names`: the summary then has a
table per task type (organ, thin, parcel, lesion, instance) whose scores are means over the
classes of that type, with the clicks that lowered the clicked class's DSC and the mean DSC
change per click. Runs whose file came from the entrypoint's salvage (watchdog at the
deadline, fallback after an engine failure) are counted and flagged per case.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from harness import metrics

COLUMNS = [("DSC it0", "dsc_iter0"), ("DSC_AUC", "dsc_auc"), ("DSC_Final", "dsc_final"),
           ("NSD_AUC", "nsd_auc"), ("NSD_Final", "nsd_final"), ("NSDc_Final", "nsd_corrected_final"),
           ("DSC_AUC timed", "dsc_auc_timed"), ("time s", "seconds")]
CSV_FIELDS = ["case", "modality", "mode", "predictor", "iteration", "seconds", "dsc", "nsd", "nsd_corrected",
              "flag", "salvage"]
CLASS_COLUMNS = [("DSC it0", "dsc_iter0"), ("DSC_AUC", "dsc_auc"), ("DSC_Final", "dsc_final"),
                 ("NSD_Final", "nsd_final")]
CLASS_CSV_FIELDS = ["case", "modality", "mode", "predictor", "label", "name", "task", "dsc_iter0", "dsc_auc",
                    "dsc_final", "nsd_auc", "nsd_final", "clicks", "clicks_lowering", "dsc_gain_per_click"]
TASK_ORDER = ("organ", "thin", "parcel", "lesion", "instance")


def modality(case: str) -> str:
    return case.split("_", 1)[0]


def _fmt(value, key: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if key == "seconds" else f"{value:.3f}"


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def table(rows: list[tuple[list[str], dict]], heads: list[str]) -> str:
    """A Markdown table: leading label columns, then COLUMNS from each row's values."""
    lines = ["| " + " | ".join(heads + [c for c, _ in COLUMNS]) + " |",
             "|" + "---|" * (len(heads) + len(COLUMNS))]
    for labels, values in rows:
        lines.append("| " + " | ".join(labels + [_fmt(values.get(k), k) for _, k in COLUMNS]) + " |")
    return "\n".join(lines)


def aggregate(records: list[dict], key) -> list[tuple[list[str], dict]]:
    """Mean of every column over the records sharing key(record), plus flag and budget counts."""
    groups = defaultdict(list)
    for rec in records:
        groups[key(rec)].append(rec)
    rows = []
    for labels in sorted(groups):
        recs = groups[labels]
        values = {k: _mean([r[k] for r in recs]) for _, k in COLUMNS}
        rows.append((list(labels) + [str(len(recs))], values))
    return rows


def summary_markdown(records: list[dict]) -> str:
    """Overall, per-task, per-modality and per-case tables; predictors of one case sit on adjacent rows."""
    order = {name: i for i, name in enumerate(dict.fromkeys(r["predictor"] for r in records))}
    records = sorted(records, key=lambda r: (r["case"], r["mode"], order[r["predictor"]]))
    overall = aggregate(records, lambda r: (r["mode"], f"{order[r['predictor']]}:{r['predictor']}"))
    overall = [([labels[0], labels[1].split(":", 1)[1], labels[2]], v) for labels, v in overall]
    per_modality = aggregate(records, lambda r: (modality(r["case"]), r["mode"],
                                                 f"{order[r['predictor']]}:{r['predictor']}"))
    per_modality = [([lb[0], lb[1], lb[2].split(":", 1)[1], lb[3]], v) for lb, v in per_modality]
    per_case = [([r["case"], r["mode"], r["predictor"], _flags(r)], r) for r in records]
    over = [f"{r['case']} {r['mode']} {r['predictor']}" for r in records if r["over_budget"]]
    sections = [
        "# Evaluation summary",
        ("DSC/NSD: mean over ground-truth classes; AUC over clicks 1..5 (max 4); NSD at 2 mm with the "
         "organisers' spacing order (NSDc: corrected order); 'timed' = 0 when the case's runs exceed 90 s x K."),
        "## Overall (mean over cases)", table(overall, ["mode", "predictor", "cases"]),
    ]
    classes = class_rows(records)
    if any(c["task"] != "untyped" for c in classes):
        sections += [
            "## Per task type (mean over the classes of that type)",
            ("Task types from the data folder's tasks.json (harness.valset). Clicks lowering: clicks after "
             "which the clicked class's DSC fell / clicks given (iteration 0 -> 1 not counted without a box); "
             "dDSC/click: mean change of the clicked class's DSC over those clicks."),
            task_table(classes, order),
        ]
    sections += [
        "## Per modality", table(per_modality, ["modality", "mode", "predictor", "cases"]),
        "## Per case", table(per_case, ["case", "mode", "predictor", "flags"]),
        "## Clicks", click_table(records, order),
        "## Time per case (all predictors)", time_table(records),
        "Over the time budget: " + (", ".join(over) if over else "none"),
        "Runs salvaged by the entrypoint (watchdog at the deadline or fallback after an engine failure): "
        + salvage_line(records, order),
    ]
    return "\n\n".join(sections) + "\n"


def click_deltas(record: dict) -> list[tuple[int, int, float]]:
    """(class index, click iteration, DSC change of that class) for every click given after a scored iteration."""
    dsc = {it["iteration"]: it.get("dsc_per_class") for it in record["iterations"]}
    out = []
    for i in range(1, 6):
        if dsc.get(i) is None or dsc.get(i - 1) is None:
            continue
        for c, order in enumerate(record["clicks_order"]):
            if len(order) >= i and order[i - 1] is not None and c < len(dsc[i]):
                out.append((c, i, dsc[i][c] - dsc[i - 1][c]))
    return out


def clicks_that_lowered_dsc(records: list[dict]) -> dict[tuple[str, str], tuple[int, int]]:
    """(mode, predictor) -> (clicks after which the clicked class's DSC fell, clicks given)."""
    counts = defaultdict(lambda: [0, 0])
    for rec in records:
        for _, _, delta in click_deltas(rec):
            key = (rec["mode"], rec["predictor"])
            counts[key][1] += 1
            counts[key][0] += delta < -1e-9
    return {k: (v[0], v[1]) for k, v in counts.items()}


def class_rows(records: list[dict]) -> list[dict]:
    """One row per (record, class): its scores, task type and name (untyped without tasks.json) and clicks."""
    rows = []
    for rec in records:
        per_class = rec.get("per_class") or metrics.per_class(rec["iterations"], rec["num_classes"])
        types = rec.get("task_types") or ["untyped"] * rec["num_classes"]
        names = rec.get("class_names") or [str(c + 1) for c in range(rec["num_classes"])]
        deltas = defaultdict(list)
        for c, _, delta in click_deltas(rec):
            deltas[c].append(delta)
        for c, values in enumerate(per_class):
            d = deltas[c]
            rows.append({"case": rec["case"], "modality": modality(rec["case"]), "mode": rec["mode"],
                         "predictor": rec["predictor"], "label": c + 1, "name": names[c], "task": types[c],
                         **{k: v for k, v in values.items() if k != "label"},
                         "clicks": len(d), "clicks_lowering": sum(x < -1e-9 for x in d),
                         "dsc_gain_per_click": float(np.mean(d)) if d else None})
    return rows


def task_scores(rows: list[dict], order: dict[str, int] | None = None) -> list[dict]:
    """Per (task type, mode, predictor): class means of CLASS_COLUMNS, click counts and the mean DSC
    change per click; rows in the report's order. Also written as scores.json (the manifest's scores)."""
    groups = defaultdict(list)
    order = order or {name: i for i, name in enumerate(dict.fromkeys(r["predictor"] for r in rows))}
    for row in rows:
        groups[(row["task"], row["mode"], row["predictor"])].append(row)
    rank = {t: i for i, t in enumerate(TASK_ORDER)}
    out = []
    for task, mode, predictor in sorted(groups, key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1], order[k[2]])):
        rs = groups[(task, mode, predictor)]
        clicks = sum(r["clicks"] for r in rs)
        gains = [r["dsc_gain_per_click"] * r["clicks"] for r in rs if r["clicks"]]
        out.append({"task": task, "mode": mode, "predictor": predictor, "classes": len(rs),
                    "cases": len({r["case"] for r in rs}), **{k: _mean([r[k] for r in rs]) for _, k in CLASS_COLUMNS},
                    "clicks": clicks, "clicks_lowering": sum(r["clicks_lowering"] for r in rs),
                    "dsc_gain_per_click": sum(gains) / clicks if clicks else None})
    return out


def task_table(rows: list[dict], order: dict[str, int]) -> str:
    """task_scores as a Markdown table."""
    lines = ["| task | mode | predictor | classes (cases) | " + " | ".join(c for c, _ in CLASS_COLUMNS)
             + " | clicks lowering | dDSC/click |",
             "|" + "---|" * (4 + len(CLASS_COLUMNS) + 2)]
    for g in task_scores(rows, order):
        values = [_fmt(g[k], k) for _, k in CLASS_COLUMNS]
        gain = "-" if g["dsc_gain_per_click"] is None else f"{g['dsc_gain_per_click']:+.3f}"
        lines.append(f"| {g['task']} | {g['mode']} | {g['predictor']} | {g['classes']} ({g['cases']}) | "
                     + " | ".join(values) + f" | {g['clicks_lowering']}/{g['clicks']} | {gain} |")
    return "\n".join(lines)


def click_table(records: list[dict], order: dict[str, int]) -> str:
    """Per (mode, predictor): clicks given, clicks after which the clicked class's DSC fell, mean DSC change."""
    groups = defaultdict(list)
    for rec in records:
        groups[(rec["mode"], order[rec["predictor"]])] += [d for _, _, d in click_deltas(rec)]
    names = {i: n for n, i in order.items()}
    lines = ["| mode | predictor | clicks | lowering DSC | dDSC/click |", "|---|---|---|---|---|"]
    for mode, p in sorted(groups):
        d = groups[(mode, p)]
        gain = f"{np.mean(d):+.3f}" if d else "-"
        lines.append(f"| {mode} | {names[p]} | {len(d)} | {sum(x < -1e-9 for x in d)} | {gain} |")
    return "\n".join(lines)


def time_table(records: list[dict]) -> str:
    """Per case and mode: K, size, and per predictor the summed run time (s) and the job's wall time."""
    groups = defaultdict(list)
    for rec in records:
        groups[(rec["case"], rec["mode"])].append(rec)
    lines = ["| case | mode | K | M voxels | runs s per predictor | total runs s | total wall s |",
             "|---|---|---|---|---|---|---|"]
    for (case, mode), recs in sorted(groups.items()):
        voxels = float(np.prod(recs[0]["shape"])) / 1e6
        per = ", ".join(f"{r['predictor']} {r['seconds']:.0f}" for r in recs)
        walls = [r.get("wall_s") for r in recs]
        wall = f"{sum(walls):.0f}" if all(w is not None for w in walls) else "-"
        lines.append(f"| {case} | {mode} | {recs[0]['num_classes']} | {voxels:.1f} | {per} | "
                     f"{sum(r['seconds'] for r in recs):.0f} | {wall} |")
    return "\n".join(lines)


def salvage_line(records: list[dict], order: dict[str, int]) -> str:
    counts = defaultdict(lambda: [0, 0])
    for rec in records:
        for it in rec["iterations"]:
            counts[rec["predictor"]][1] += 1
            counts[rec["predictor"]][0] += bool(it.get("salvage"))
    salvaged = [f"{name} {n}/{total}" for name, (n, total) in sorted(counts.items(), key=lambda kv: order[kv[0]])
                if n]
    return ", ".join(salvaged) if salvaged else "none"


def _flags(record: dict) -> str:
    flagged = [str(r["iteration"]) for r in record["iterations"] if r["flag"]]
    salvaged = [f"{r['iteration']} ({r['salvage']})" for r in record["iterations"] if r.get("salvage")]
    parts = ([f"bad output at it {','.join(flagged)}"] if flagged else []) + (
        [f"salvaged at it {', '.join(salvaged)}"] if salvaged else [])
    return "; ".join(parts)


def write(records: list[dict], out: Path) -> str:
    """Write every artefact under `out`; returns the Markdown summary."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(records, indent=1))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for rec in records:
            for it in rec["iterations"]:
                writer.writerow({**rec, **it, "modality": modality(rec["case"])})
    with open(out / "results_classes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CLASS_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(class_rows(records))
    (out / "scores.json").write_text(json.dumps(task_scores(class_rows(records)), indent=1))
    summary = summary_markdown(records)
    (out / "summary.md").write_text(summary)
    from harness import figures  # matplotlib only when writing figures

    figures.write_all(records, out / "figures")
    return summary
