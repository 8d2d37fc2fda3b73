"""Procedural parcellated MR brains, the independent set's main task (seven brains of 10 to 20
regions): lobes that mix grey and white matter, and cortex parcels over one white-matter class,
through the official loop with the engine in-process.

    python -m harness.brains [--seeds 0 4] [--detail] [--predictor classical]

Why: the validation set's parcels come from one template (ICBM152), whose lobar and cortex
parcels are what engine rules were tuned on. These cases are training.synth.brain_scene (T1 or
T2 means, about 1.3 mm, skull kept or stripped) at seeds 4,000,000 + i, far from the training
streams, which draw such scenes from generator v8 on: in distribution for the network, new
anatomy for the engine's rules. Even seeds are lobes, odd seeds cortex parcels.
"""

from __future__ import annotations

import argparse

import numpy as np

from harness import baselines, classical
from harness.loop import LabelledCase, print_box_scores

BASELINES = {"classical": classical.run, "boxfill": baselines.boxfill}

SEED_BASE = 4_000_000
SHAPE, SPACING = (96, 128, 112), np.array([1.5, 1.3, 1.3])  # (z, y, x) voxels and mm: a 144 x 166 x 146 mm head


TISSUE_SEEDS = 100  # tissue-labelled brains draw at SEED_BASE + TISSUE_SEEDS + seed


def brain(seed: int, tissues: bool = False) -> LabelledCase:
    """Labels 1..K: lobes (even seeds) or the white matter and cortex parcels (odd seeds); with
    `tissues`, CSF, grey and white matter (1, 2, 3)."""
    from training import synth  # torch: imported only when procedural cases are built

    rng = np.random.default_rng(SEED_BASE + (TISSUE_SEEDS if tissues else 0) + seed)
    labelling = "tissues" if tissues else "lobes" if seed % 2 == 0 else "cortex"
    labels, tissue = synth.brain_scene(rng, SHAPE, SPACING, labelling, clefts=False)
    image = synth.render(rng, tissue, tissue > 0, SPACING, "mr", means=synth.brain_means(rng, "mr"))
    return LabelledCase(f"MR_brain{seed}_{labelling}", image, labels, SPACING[::-1].copy())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs=2, type=int, default=[0, 4], metavar=("FIRST", "END"))
    parser.add_argument("--detail", action="store_true", help="the shape and each class's DSC_AUC")
    parser.add_argument("--predictor", choices=sorted(BASELINES) + ["engine"], default="engine")
    parser.add_argument("--tissues", action="store_true", help="brains labelled by tissue (three twins)")
    args = parser.parse_args(argv)
    print_box_scores((brain(seed, args.tissues) for seed in range(*args.seeds)), detail=args.detail,
                     predict=BASELINES.get(args.predictor))


if __name__ == "__main__":
    main()
