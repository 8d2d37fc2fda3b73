"""The mean of exported weight files of one architecture (a "model soup", Wortsman et al. 2022).

    python -m training.soup weights/global_expert.pt runs/legZ14/export.pt --out runs/S7_14/global_expert.pt

Why: legs fine-tuned from the shipped weights gained on the MR brains and lost on the valset's CT
and box-less cases (Z12, Z13, training/resume/README.md). A leg that started from the shipped
file lies in its basin, so the mean of the two is a network too, and the mean of Z7 and Z13 kept
most of both. A file with fewer input channels is widened with zero weights first
(load_weights), as `--init` does, so the mean halves the new channels' weights.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import torch

from app.models.unet3d import build_unet, load_weights


def soup(paths: list[Path]) -> dict:
    """An export-format dict holding the mean of the files' weights, built in fp32, stored in fp16.
    The architecture and metadata are the last file's; meta["soup"] names every ingredient."""
    files = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    config = files[-1]["model_config"]
    states = []
    for f in files:
        model = build_unet(config)
        load_weights(model, f["model"])
        states.append(model.state_dict())
    mean = {k: torch.stack([s[k].float() for s in states]).mean(0).half() for k in states[0]}
    ingredients = [{"file": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "step": f["meta"]["step"]}
                   for p, f in zip(paths, files)]
    return {"model": mean, "model_config": config, "meta": {**files[-1]["meta"], "soup": ingredients}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+", help="exported weight files; the last sets the architecture")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if len(args.files) < 2:
        raise SystemExit("a soup needs at least two files")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(soup(args.files), str(args.out) + ".tmp")
    os.replace(str(args.out) + ".tmp", args.out)
    print(f"{args.out}: mean of {len(args.files)} files", flush=True)


if __name__ == "__main__":
    main()
