"""The real labelled cases and their train/validation split.

Split (decided once, never mixed): train on the two small single-lesion MR cases; hold
out the multi-class brain tissue case (the only real multi-class volume), the second
brain lesion and both CT lung lesions for validation on the harness. Real data is a
seasoning here: the procedural generator carries the training. `rule_parcels` gives a
real training image labels by rule (its foreground split into touching parcels of one
intensity), the brain-parcellation task on real texture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from training.synth import SynthCase, _relabel, _split_into_parcels

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


def rule_parcels(rng: np.random.Generator, case: SynthCase) -> SynthCase:
    """The case's foreground (largest bright component, holes filled) split into 3..14
    Voronoi parcels, the real label painted on top."""
    threshold = np.percentile(case.image, rng.uniform(40, 70))
    components, _ = ndimage.label(case.image > threshold)
    if components.max() == 0:
        return case
    largest = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
    foreground = ndimage.binary_fill_holes(largest)
    labels = np.zeros(case.labels.shape, np.uint8)
    _split_into_parcels(rng, labels, foreground, int(rng.integers(3, 15)))
    labels[case.labels > 0] = labels.max() + 1
    return SynthCase(case.image, _relabel(labels), case.spacing, case.look, False)
