"""The export decision: a candidate weights folder against the shipped one, each through the same
engine on the same cases, judged by the export rule below (training/resume/README.md, leg Z5).

    python -m harness.compare --candidate runs/legZ5/w                   # every measure, then the verdict
    python -m harness.compare --candidate DIR --only valset-box@7 brains  # some measures (a second core)
    python -m harness.compare --candidate DIR --reference weights --list   # what is cached

Why: each leg's rule used to be a set of shell commands in a git-ignored folder, with the
reference's numbers copied from older sessions, measured with older engines. Here every measure
of both folders is computed by this engine and cached under reports/compare/<engine>/<weights>/
(<engine>: a hash of app/'s source, <weights>: of the *_expert.pt files), so two processes can
share the measures and the reference is measured once per engine and machine. The cases' own
code (harness.brains, harness.valset, the generator, the loop) is not in the key: after changing
what a measure's cases are, delete reports/compare.

Measures (DSC_AUC means over cases, the official loop, engine in-process, box mode unless the
valset's tasks.json declares otherwise):
    valset-box@S   the valset's box cases at widening seed S (2025 is the organisers')
    valset-nobox   its no-box cases (no box, so no seed)
    brains         harness.brains, procedural lobe and cortex brains 0-23
    aseg           harness.brains --aseg, brains 0-7
    icbm           harness.brains --icbm, the real template by tissue and hemisphere
    icbm2x         harness.native's 1 mm ICBM lobar parcels (skipped when the source is absent)
    paired         harness.paired on the valset: mean over cases of the candidate's mean DSC minus
                   the reference's on the reference's trajectory (the candidate's folder only)

The rule: paired >= 0; the mean of valset-box over seeds 2025, 7, 11 not below the reference's;
valset-nobox >= the reference's - 0.01; over brains, aseg, icbm, icbm2x the mean difference >= 0
and none below the reference's - 0.02.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from functools import partial
from pathlib import Path

import numpy as np

from app import engine
from app.experts import load_experts
from harness import brains, loop, native, paired
from harness import eval as harness_eval

SEEDS = (2025, 7, 11)
BRAIN_MEASURES = ("brains", "aseg", "icbm", "icbm2x")
MEASURES = (*(f"valset-box@{s}" for s in SEEDS), "valset-nobox", *BRAIN_MEASURES, "paired")
NOBOX_MARGIN, BRAIN_MARGIN = 0.01, 0.02


def digest(paths) -> str:
    """Short sha256 over the files' names and bytes."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:12]


def cache_dir(root: Path, weights: Path) -> Path:
    """reports/compare/<engine>/<weights>: numbers are only reused for this engine and these weights."""
    app = loop.REPO / "app"
    files = list(weights.glob("*_expert.pt"))
    if not files:
        raise SystemExit(f"{weights}: no *_expert.pt")
    return root / f"engine-{digest(app.rglob('*.py'))}" / f"weights-{digest(files)}"


def cases_of(measure: str, data: Path) -> list[tuple[loop.LabelledCase, bool]]:
    """(case, box mode) pairs of a measure; empty when its source is absent."""
    if measure.startswith("valset") or measure == "paired":
        tasks = loop.load_tasks(data)
        pairs = [(loop.load_labelled(p), loop.default_box_mode(p.stem, tasks))
                 for p in harness_eval.find_cases([data], None)]
        if measure == "paired":
            return pairs
        return [(c, box) for c, box in pairs if box == measure.startswith("valset-box")]
    if measure in ("brains", "aseg"):
        seeds = range(24) if measure == "brains" else range(8)
        return [(brains.brain(s, "parcels" if measure == "brains" else "aseg"), True) for s in seeds]
    if measure == "icbm":
        return [(brains.icbm_aseg(), True)]
    case = native.native_case("icbm2x")
    return [] if case is None else [(case, True)]


def measure_one(measure: str, data: Path, experts, reference=None) -> dict:
    """Per-case scores of one measure: DSC it0 / DSC_AUC / DSC_Final, or paired differences."""
    seed = int(measure.split("@")[1]) if "@" in measure else loop.BOX_SEED
    rows = {}
    with open(os.devnull, "w") as quiet:
        for case, box_mode in cases_of(measure, data):
            if measure == "paired":
                row = paired.paired_case(case, box_mode, reference, experts)
                rows[case.name] = float(np.mean(row["candidate"]) - np.mean(row["reference"]))
            else:
                predictor = loop.InProcessPredictor(partial(engine.run, experts=experts))
                record, _ = loop.run_case(case, predictor, box_mode, log=quiet, box_seed=seed)
                rows[case.name] = [record["iterations"][0]["dsc"] if box_mode else None,
                                   record["dsc_auc"], record["dsc_final"]]
            print(f"  {measure} {case.name}: {rows[case.name]}", flush=True)
    return rows


def value(rows: dict, measure: str) -> float | None:
    """The measure's number: mean DSC_AUC over its cases, or the mean paired difference."""
    if not rows:
        return None
    return float(np.mean([r if measure == "paired" else r[1] for r in rows.values()]))


def verdict(cand: dict[str, float | None], ref: dict[str, float | None]) -> list[tuple[str, bool]]:
    """The rule's four conditions, each with whether it holds; a measure missing on either side fails."""
    box = [f"valset-box@{s}" for s in SEEDS]
    if any(numbers.get(m) is None for numbers in (cand, ref) for m in (*box, "valset-nobox")) or \
            cand.get("paired") is None:
        return [("a valset measure is missing", False)]
    brain = [m for m in BRAIN_MEASURES if cand.get(m) is not None and ref.get(m) is not None]
    if not brain:
        return [("no brain measure", False)]
    box_cand, box_ref = np.mean([cand[m] for m in box]), np.mean([ref[m] for m in box])
    nobox_floor = ref["valset-nobox"] - NOBOX_MARGIN
    diffs = [cand[m] - ref[m] for m in brain]
    brain_text = (f"brains ({', '.join(brain)}) mean difference {np.mean(diffs):+.4f} >= 0, "
                  f"lowest {min(diffs):+.4f} >= {-BRAIN_MARGIN}")
    return [
        (f"paired {cand['paired']:+.4f} >= 0", bool(cand["paired"] >= 0)),
        (f"valset box over seeds {box_cand:.4f} >= {box_ref:.4f}", bool(box_cand >= box_ref)),
        (f"valset no box {cand['valset-nobox']:.4f} >= {nobox_floor:.4f}", bool(cand["valset-nobox"] >= nobox_floor)),
        (brain_text, bool(np.mean(diffs) >= 0 and min(diffs) >= -BRAIN_MARGIN)),
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", type=Path, required=True)
    parser.add_argument("--reference", type=Path, default=loop.REPO / "weights")
    parser.add_argument("--data", type=Path, default=Path("reports/valset"))
    parser.add_argument("--cache", type=Path, default=Path("reports/compare"))
    parser.add_argument("--only", nargs="+", choices=MEASURES, help="compute these measures, no verdict")
    parser.add_argument("--list", action="store_true", help="print what is cached, compute nothing")
    args = parser.parse_args(argv)
    if not (args.data / loop.TASKS_FILE).exists():
        raise SystemExit(f"{args.data}: no validation set (make valset)")
    dirs = {role: cache_dir(args.cache, getattr(args, role)) for role in ("reference", "candidate")}
    experts = {}

    def loaded(role: str):
        if role not in experts:
            experts[role] = load_experts(getattr(args, role))
        return experts[role]

    numbers = {"reference": {}, "candidate": {}}
    for measure in args.only or MEASURES:
        # paired belongs to the candidate's folder, named after the reference it was paired with
        for role in ("candidate",) if measure == "paired" else ("reference", "candidate"):
            name = f"paired-{dirs['reference'].name}" if measure == "paired" else measure
            path = dirs[role] / f"{name}.json"
            if not path.exists() and not args.list:
                print(f"{role} {getattr(args, role)}: {measure}", flush=True)
                reference = loaded("reference") if measure == "paired" else None
                rows = measure_one(measure, args.data, loaded(role), reference)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(rows, indent=1))
            numbers[role][measure] = value(json.loads(path.read_text()), measure) if path.exists() else None
    for measure in args.only or MEASURES:
        ref, cand = numbers["reference"].get(measure), numbers["candidate"].get(measure)
        show = [f"{x:.4f}" if x is not None else "-" for x in (cand, ref)]
        print(f"{measure:15s} candidate {show[0]:>8s}  reference {show[1]:>8s}")
    if not args.only and not args.list:
        held = verdict(numbers["candidate"], numbers["reference"])
        for text, ok in held:
            print(f"{'holds' if ok else 'FAILS'}: {text}")
        print("export" if all(ok for _, ok in held) else "keep the reference")


if __name__ == "__main__":
    main()
