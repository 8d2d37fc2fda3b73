"""`python -m harness.merge DIR... [--out DIR]`: join shard results into one report.

Records carry absolute paths to their case and predictions, so the merged report draws the
same figures as a single run would.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dirs", nargs="+", type=Path, help="folders holding results.json")
    ap.add_argument("--out", type=Path, default=Path("reports/eval/merged"))
    args = ap.parse_args(argv)
    records = {}
    for d in args.dirs:
        for rec in json.loads((d / "results.json").read_text()):
            records[(rec["case"], rec["mode"], rec["predictor"])] = rec  # a later shard wins on reruns
    print(report.write(list(records.values()), args.out))


if __name__ == "__main__":
    main()
