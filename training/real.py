"""The real labelled cases and their train/validation split.

Split (decided once, never mixed): train on the two small single-lesion MR cases; hold
out the multi-class brain tissue case (the only real multi-class volume), the second
brain lesion and both CT lung lesions for validation on the harness. Real data is a
seasoning here: the procedural generator carries the training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.synth import SynthCase

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "labelled"
TRAIN = ("MR_PyRadiomics_brain1", "MR_PyRadiomics_breast1")
VALIDATION = ("MR_ICBM152_tissue", "MR_PyRadiomics_brain2", "CT_PyRadiomics_lung1", "CT_PyRadiomics_lung2")


def load_labelled(path: Path) -> SynthCase:
    """A training-style npz (imgs, gts, spacing in stored x, y, z order) as a case."""
    with np.load(path) as data:
        spacing = np.asarray(data["spacing"], float)[::-1].copy()
        return SynthCase(data["imgs"], data["gts"].astype(np.uint8), spacing, path.name.split("_")[0].lower(), False)


def training_cases() -> list[SynthCase]:
    assert not set(TRAIN) & set(VALIDATION), "a case may not be in both splits"
    return [load_labelled(DATA / f"{name}.npz") for name in TRAIN]
