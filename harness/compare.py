"""The export decision: a candidate weights folder against the shipped one, each through the same
engine on the same cases, judged by the export rule below (training/resume/README.md, leg Z7).

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

The rule (training/resume/README.md, leg Z8; leg Z7's with floors from the measures' noise, fixed
on 2026-12-06 before any of Z8's or Z9's numbers): the candidate is scored where issue 9's
independent set is, weighed by its task mix of 2 CT cases, 7 MR brains and 1 microscopy case
without boxes (MIX):
    CT          the valset's CT box cases, DSC_AUC difference averaged over seeds 2025, 7, 11
    MR          the mean difference of the valset's MR box cases (over the seeds), brains, aseg,
                icbm and icbm2x
    Microscopy  the valset's microscopy no-box cases
It exports when paired >= 0 and the weighed difference >= 0, with floors: all the valset's box
cases over the seeds, valset-nobox and each brain measure no lower than the reference's minus
the larger of a fixed margin (0.02; 0.01 without box) and the standard error of its per-case
differences. A one-case measure (icbm, icbm2x) takes the per-case spread of the brain measures
with several cases: a single replayed case swings by about 0.1 between legs that agree to 0.002
when paired (harness/EXPERIMENTS.md, ninth session).
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
BOX_MEASURES = tuple(f"valset-box@{s}" for s in SEEDS)
MEASURES = (*BOX_MEASURES, "valset-nobox", *BRAIN_MEASURES, "paired")
NOBOX_MARGIN, MARGIN = 0.01, 0.02
MIX = {"CT": 0.2, "MR": 0.7, "Microscopy": 0.1}  # issue 9's independent set: 2 CT, 7 MR brains, 1 nuclei case
BRAIN_CASES = {"brains": ("parcels", (0, 24)), "aseg": ("aseg", (0, 8)), "icbm": ("icbm", (0, 0))}  # brains.cases


def digest(paths) -> str:
    """Short sha256 over the files' names and bytes."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:12]


def cache_dir(root: Path, weights: Path) -> Path:
    """reports/compare/<engine>/<weights>: numbers are only reused for this engine (app/'s source
    and the SEGFM_* switches set) and these weights."""
    app = loop.REPO / "app"
    if not (weights / "global_expert.pt").exists():
        raise SystemExit(f"{weights}: no global_expert.pt")
    engine_key = digest(app.rglob("*.py"))
    switches = sorted((k, v) for k, v in os.environ.items() if k.startswith("SEGFM_") and k != "SEGFM_WEIGHTS")
    if switches:  # an engine with a rule switched is another engine
        engine_key = hashlib.sha256((engine_key + repr(switches)).encode()).hexdigest()[:12]
    return root / f"engine-{engine_key}" / f"weights-{digest(weights.glob('*_expert.pt'))}"


def data_key(data: Path) -> str:
    """The valset's cases as they are: its tasks.json and each case file's name and size."""
    h = hashlib.sha256((data / loop.TASKS_FILE).read_bytes())
    for path in sorted(data.glob("*.npz")):
        h.update(f"{path.name}:{path.stat().st_size}".encode())
    return h.hexdigest()[:12]


def cases_of(measure: str, data: Path):
    """(case, box mode) pairs of a measure, one at a time; none when its source is absent."""
    if measure == "paired":
        return harness_eval.declared_cases(data)
    if measure == "valset-nobox" or measure.startswith("valset-box@"):
        return harness_eval.declared_cases(data, box=measure != "valset-nobox")
    if measure in BRAIN_CASES:
        return ((case, True) for case in brains.cases(*BRAIN_CASES[measure]))
    if measure == "icbm2x":
        case = native.native_case("icbm2x")
        return iter([] if case is None else [(case, True)])
    raise ValueError(f"unknown measure {measure}")


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


def value(rows: dict | None, measure: str, modality: str | None = None) -> float | None:
    """The measure's number: mean DSC_AUC over its cases (of one modality, by the file name's
    prefix), or the mean paired difference; None when it has no such case."""
    values = [r if measure == "paired" else r[1] for name, r in (rows or {}).items()
              if modality is None or name.split("_")[0] == modality]
    return float(np.mean(values)) if values else None


def at_least(diff: float, floor: float) -> bool:
    """diff >= floor, forgiving the rounding of float sums (2.48 - 2.50 is -0.020000000000000018)."""
    return bool(diff >= floor - 1e-9)


def difference(cand: dict, ref: dict, measures, modality: str | None = None) -> float | None:
    """Mean over the measures of the candidate's number minus the reference's (of one modality's
    cases); None when a measure has no such case on either side."""
    pairs = [(value(cand[m], m, modality), value(ref[m], m, modality)) for m in measures]
    return None if any(c is None or r is None for c, r in pairs) else float(np.mean([c - r for c, r in pairs]))


def case_differences(cand: dict, ref: dict, measures) -> list[float]:
    """Per case of the measures (the seeds of one set of cases), the candidate's DSC_AUC minus the
    reference's, averaged over the measures."""
    names = sorted(set.intersection(*(set(cand[m]) & set(ref[m]) for m in measures)))
    return [float(np.mean([cand[m][n][1] - ref[m][n][1] for m in measures])) for n in names]


def floor(diffs: list[float], margin: float, spread: float | None) -> float:
    """The lowest difference a measure may show: minus the larger of the margin and the standard
    error of its per-case differences; a one-case measure's error is the given per-case spread."""
    error = np.std(diffs, ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1 else (spread or 0.0)
    return -max(margin, float(error))


def mix_differences(cand: dict, ref: dict, brain: list[str]) -> dict[str, float]:
    """DSC_AUC difference per modality of MIX; a modality without cases in the valset is left out."""
    mr = [d for d in [difference(cand, ref, BOX_MEASURES, "MR"), *(difference(cand, ref, [m]) for m in brain)]
          if d is not None]
    diffs = {"CT": difference(cand, ref, BOX_MEASURES, "CT"), "MR": float(np.mean(mr)) if mr else None,
             "Microscopy": difference(cand, ref, ["valset-nobox"], "Microscopy")}
    return {k: d for k, d in diffs.items() if d is not None}


def verdict(cand: dict[str, dict | None], ref: dict[str, dict | None]) -> list[tuple[str, bool]]:
    """The rule's conditions on the per-case rows of each measure, each with whether it holds. A
    measure missing on one side fails; a brain measure missing on both (its source absent here) is
    left out."""
    if any(not numbers.get(m) for numbers in (cand, ref) for m in (*BOX_MEASURES, "valset-nobox")) or \
            not cand.get("paired"):
        return [("a valset measure is missing", False)]
    one_sided = [m for m in BRAIN_MEASURES if (not cand.get(m)) != (not ref.get(m))]
    brain = [m for m in BRAIN_MEASURES if cand.get(m) and ref.get(m)]
    if one_sided or not brain:
        return [(f"brain measures missing on one side: {one_sided or 'all'}", False)]
    mix = mix_differences(cand, ref, brain)
    weighed = sum(MIX[k] * d for k, d in mix.items()) / sum(MIX[k] for k in mix)
    mix_text = ", ".join(f"{k} {d:+.4f} x {MIX[k]}" for k, d in mix.items())
    per_case = {"valset box over seeds": (case_differences(cand, ref, BOX_MEASURES), MARGIN),
                "valset no box": (case_differences(cand, ref, ["valset-nobox"]), NOBOX_MARGIN),
                **{m: (case_differences(cand, ref, [m]), MARGIN) for m in brain}}
    several = [d for m in brain if len(per_case[m][0]) > 1 for d in per_case[m][0]]
    spread = float(np.std(several, ddof=1)) if len(several) > 1 else None
    paired_diff = value(cand["paired"], "paired")
    held = [(f"paired {paired_diff:+.4f} >= 0", at_least(paired_diff, 0.0)),
            (f"weighed by the task mix ({mix_text}): {weighed:+.4f} >= 0", at_least(weighed, 0.0))]
    for name, (diffs, margin) in per_case.items():
        diff, lowest = float(np.mean(diffs)), floor(diffs, margin, spread if name in brain else None)
        held.append((f"{name}, difference {diff:+.4f} >= {lowest:+.4f} (n = {len(diffs)})", at_least(diff, lowest)))
    return held


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
    data = data_key(args.data)
    experts = {}

    def loaded(role: str):
        if role not in experts:
            experts[role] = load_experts(getattr(args, role))
        return experts[role]

    numbers = {"reference": {}, "candidate": {}}
    for measure in args.only or MEASURES:
        # the valset's numbers belong to its cases as they are; paired to the candidate's folder,
        # named after the reference it was paired with
        name = f"{measure}-data-{data}" if measure.startswith("valset") else measure
        if measure == "paired":
            name = f"paired-data-{data}-{dirs['reference'].name}"
        for role in ("candidate",) if measure == "paired" else ("reference", "candidate"):
            path = dirs[role] / f"{name}.json"
            if not path.exists() and not args.list:
                print(f"{role} {getattr(args, role)}: {measure}", flush=True)
                reference = loaded("reference") if measure == "paired" else None
                rows = measure_one(measure, args.data, loaded(role), reference)
                if rows:  # nothing to measure (a source absent): nothing cached
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.with_suffix(".tmp").write_text(json.dumps(rows, indent=1))
                    os.replace(path.with_suffix(".tmp"), path)
            numbers[role][measure] = json.loads(path.read_text()) if path.exists() else None
    for measure in args.only or MEASURES:
        ref, cand = (value(numbers[role].get(measure), measure) for role in ("reference", "candidate"))
        show = [f"{x:.4f}" if x is not None else "-" for x in (cand, ref)]
        print(f"{measure:15s} candidate {show[0]:>8s}  reference {show[1]:>8s}")
    if not args.only and not args.list:
        held = verdict(numbers["candidate"], numbers["reference"])
        for text, ok in held:
            print(f"{'holds' if ok else 'FAILS'}: {text}")
        print("export" if all(ok for _, ok in held) else "keep the reference")


if __name__ == "__main__":
    main()
