"""Procedural head CTs, the independent set's head-CT task: soft tissue (scalp and brain) and the
skull, two boxed classes whose boxes nest, through the official loop with the engine in-process.

    python -m harness.headct [--seeds 0 6]

Why: the independent set's head CT had its bone segmented as the brain inside it (issue 9),
and the validation set has no head CT. The cases are training.synth.head_scene rendered with
the CT look and the bone brightened as training.synth.generate does, at seeds 3,000,000 + i,
far from the training streams (which draw such scenes too: the network has seen the task).
The engine's lining rule (app.views.ClassView.lining) was chosen on seeds 0..5.
"""

from __future__ import annotations

import argparse

import numpy as np

from harness.loop import LabelledCase, print_box_scores

SEED_BASE = 3_000_000
SHAPE, SPACING = (48, 128, 128), np.array([2.5, 0.9, 0.9])  # (z, y, x) voxels and mm


def head_ct(seed: int) -> LabelledCase:
    """Class 1: soft tissue (the head but its skull), class 2: the skull."""
    from training import synth

    rng = np.random.default_rng(SEED_BASE + seed)
    labels, head = synth.head_scene(rng, SHAPE, SPACING)
    image = synth.render(rng, labels, head, SPACING, "ct")
    image[labels == 2] = np.maximum(image[labels == 2], rng.integers(200, 256))
    gts = np.zeros(SHAPE, np.uint8)
    gts[(labels > 0) & (labels != 2)] = 1
    gts[labels == 2] = 2
    return LabelledCase(f"CT_head{seed}", image, gts, SPACING[::-1].copy())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs=2, type=int, default=[0, 6], metavar=("FIRST", "END"))
    args = parser.parse_args(argv)
    print_box_scores(head_ct(seed) for seed in range(*args.seeds))


if __name__ == "__main__":
    main()
