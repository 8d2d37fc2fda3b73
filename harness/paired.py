"""Two weights folders compared on the same inputs: the official loop replayed with the engine on
the reference weights, and at every iteration the candidate's engine given that same input
(loop.run_case's shadow), its output scored but never fed back.

    python -m harness.paired --candidate runs/s7/Z4                       # against weights/
    python -m harness.paired --data reports/valset --reference DIR --candidate DIR --cases A B
    python -m harness.paired --candidate DIR --box-seed 7                  # another widening draw
    python -m harness.paired --candidate DIR --brains aseg --seeds 0 8     # harness.brains' cases

Why: two weights files each replayed on their own part ways at the first click that differs
(another class's error becomes the largest, so a click of the other sign follows), and the
intensity rules amplify that: on the valset's ICBM cortex parcels, legs C and Z did the same to
within 0.001 per class given the same input at iteration 2, while their own replays differed by
0.055 in DSC_AUC (harness/EXPERIMENTS.md, seventh session). Paired scores measure which network
is better on the engine's real inputs; the candidate's own replay still decides what it scores.
Prints per case the mean DSC over the iterations of each, and their difference.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path

import numpy as np

from app import engine
from app.experts import load_experts
from harness import brains, loop
from harness import eval as harness_eval


def paired_case(case: loop.LabelledCase, box_mode: bool, reference, candidate, box_seed: int = loop.BOX_SEED
                ) -> dict:
    """Mean DSC per iteration of the reference's replay and of the candidate on its inputs."""
    ref = loop.InProcessPredictor(partial(engine.run, experts=reference))
    cand = loop.InProcessPredictor(partial(engine.run, experts=candidate))
    with open(os.devnull, "w") as quiet:
        record, _ = loop.run_case(case, ref, box_mode, log=quiet, box_seed=box_seed, shadow=cand)
    return {"case": case.name, "reference": [it["dsc"] for it in record["iterations"]],
            "candidate": [it["dsc"] for it in record["shadow"]]}


def cases(args):
    """(case, box mode) pairs: --data's cases in their declared modes, or --brains' in box mode."""
    if args.brains:
        yield from ((case, True) for case in brains.cases(args.brains, args.seeds))
    else:
        yield from harness_eval.declared_cases(args.data, args.cases)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("reports/valset"))
    parser.add_argument("--reference", type=Path, default=loop.REPO / "weights")
    parser.add_argument("--candidate", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", help="case names (default: every case in --data)")
    parser.add_argument("--box-seed", type=int, default=loop.BOX_SEED,
                        help="seed of the boxes' random widening (the organisers' is 2025)")
    parser.add_argument("--brains", choices=sorted(brains.LABELLINGS) + ["icbm"],
                        help="harness.brains' cases (box mode) instead of --data")
    parser.add_argument("--seeds", nargs=2, type=int, default=[0, 8], metavar=("FIRST", "END"),
                        help="with --brains: the brains' seeds")
    args = parser.parse_args(argv)
    experts = {}
    for role in ("reference", "candidate"):
        experts[role] = load_experts(getattr(args, role))
        if experts[role][0] is None:
            raise SystemExit(f"{getattr(args, role)}: no global_expert.pt")
    rows = []
    for case, box_mode in cases(args):
        row = paired_case(case, box_mode, experts["reference"], experts["candidate"], args.box_seed)
        diff = np.mean(row["candidate"]) - np.mean(row["reference"])
        print(f"{case.name}: mean DSC reference {np.mean(row['reference']):.4f} candidate "
              f"{np.mean(row['candidate']):.4f} ({diff:+.4f})", flush=True)
        rows.append(diff)
    print(f"mean of {len(rows)}: candidate - reference {np.mean(rows):+.4f}, better on {sum(d > 0 for d in rows)}, "
          f"worse on {sum(d < 0 for d in rows)}")


if __name__ == "__main__":
    main()
