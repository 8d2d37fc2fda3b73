"""Training curves from runs/<expert>/history.jsonl: loss, throughput and validation DSC.

    python -m training.plot [--run runs/global] [--out reports/training_curves.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): no display here


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/global"))
    parser.add_argument("--out", type=Path, default=Path("reports/training_curves.png"))
    args = parser.parse_args(argv)
    records = [json.loads(line) for line in (args.run / "history.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r]
    vals = [r for r in records if "val" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.6)
    axes[0].set(title="training loss (Dice + BCE)", xlabel="step", yscale="log")
    axes[1].plot([r["step"] for r in steps], [r["samples_per_s"] for r in steps], lw=0.6)
    axes[1].set(title="throughput (samples/s, 2 CPU cores)", xlabel="step")
    for key in ("box", "click2"):
        axes[2].plot([r["step"] for r in vals], [r["val"][key] for r in vals], marker="o", label=key)
    axes[2].set(title="synthetic validation DSC", xlabel="step", ylim=(0, 1))
    axes[2].legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"{args.out}: {len(steps)} loss points, {len(vals)} validations; last {vals[-1] if vals else None}")


if __name__ == "__main__":
    main()
