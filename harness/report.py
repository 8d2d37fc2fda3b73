"""Evaluation records -> results.json, results.csv, summary.md and figures.

A record is what harness.loop.run_case returns plus `predictor`, `path` (the labelled case)
and `preds` (an npz of the iteration-0 and final predictions), so a report can be rebuilt
from JSON alone (harness.merge does that for shards).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

COLUMNS = [("DSC it0", "dsc_iter0"), ("DSC_AUC", "dsc_auc"), ("DSC_Final", "dsc_final"),
           ("NSD_AUC", "nsd_auc"), ("NSD_Final", "nsd_final"), ("NSDc_Final", "nsd_corrected_final"),
           ("DSC_AUC timed", "dsc_auc_timed"), ("time s", "seconds")]
CSV_FIELDS = ["case", "modality", "mode", "predictor", "iteration", "seconds", "dsc", "nsd", "nsd_corrected",
              "flag"]


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
    """Overall, per-modality and per-case tables; predictors of one case sit on adjacent rows."""
    order = {name: i for i, name in enumerate(dict.fromkeys(r["predictor"] for r in records))}
    records = sorted(records, key=lambda r: (r["case"], r["mode"], order[r["predictor"]]))
    overall = aggregate(records, lambda r: (r["mode"], f"{order[r['predictor']]}:{r['predictor']}"))
    overall = [([labels[0], labels[1].split(":", 1)[1], labels[2]], v) for labels, v in overall]
    per_modality = aggregate(records, lambda r: (modality(r["case"]), r["mode"],
                                                 f"{order[r['predictor']]}:{r['predictor']}"))
    per_modality = [([lb[0], lb[1], lb[2].split(":", 1)[1], lb[3]], v) for lb, v in per_modality]
    per_case = [([r["case"], r["mode"], r["predictor"], _flags(r)], r) for r in records]
    over = [f"{r['case']} {r['mode']} {r['predictor']}" for r in records if r["over_budget"]]
    lowered = [f"{mode} {name} {low}/{total}" for (mode, name), (low, total) in clicks_that_lowered_dsc(records).items()]
    return "\n\n".join([
        "# Evaluation summary",
        ("DSC/NSD: mean over ground-truth classes; AUC over clicks 1..5 (max 4); NSD at 2 mm with the "
         "organisers' spacing order (NSDc: corrected order); 'timed' = 0 when the case's runs exceed 90 s x K."),
        "## Overall (mean over cases)", table(overall, ["mode", "predictor", "cases"]),
        "## Per modality", table(per_modality, ["modality", "mode", "predictor", "cases"]),
        "## Per case", table(per_case, ["case", "mode", "predictor", "flags"]),
        "Over the time budget: " + (", ".join(over) if over else "none"),
        "Clicks after which the clicked class's DSC fell: " + (", ".join(lowered) if lowered else "none"),
    ]) + "\n"


def clicks_that_lowered_dsc(records: list[dict]) -> dict[tuple[str, str], tuple[int, int]]:
    """(mode, predictor) -> (clicks after which the clicked class's DSC fell, clicks given)."""
    counts = defaultdict(lambda: [0, 0])
    for rec in records:
        dsc = {it["iteration"]: it.get("dsc_per_class") for it in rec["iterations"]}
        for i in range(1, 6):
            if dsc.get(i) is None or dsc.get(i - 1) is None:
                continue
            for c, order in enumerate(rec["clicks_order"]):
                if len(order) >= i and order[i - 1] is not None and c < len(dsc[i]):
                    key = (rec["mode"], rec["predictor"])
                    counts[key][1] += 1
                    counts[key][0] += dsc[i][c] < dsc[i - 1][c] - 1e-9
    return {k: (v[0], v[1]) for k, v in counts.items()}


def _flags(record: dict) -> str:
    flagged = [str(r["iteration"]) for r in record["iterations"] if r["flag"]]
    return f"bad output at it {','.join(flagged)}" if flagged else ""


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
    summary = summary_markdown(records)
    (out / "summary.md").write_text(summary)
    from harness import figures  # matplotlib only when writing figures

    figures.write_all(records, out / "figures")
    return summary
