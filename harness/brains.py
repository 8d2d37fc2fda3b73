"""Procedural parcellated MR brains, the independent set's main task (seven brains of 10 to 20
regions): lobes that mix grey and white matter, and cortex parcels over one white-matter class,
through the official loop with the engine in-process.

    python -m harness.brains [--seeds 0 4] [--detail] [--predictor classical] [--tissues | --aseg | --icbm]
    python -m harness.brains --aseg --finer 1.5          # about 1 mm, rendered there

Why: the validation set's parcels come from one template (ICBM152), whose lobar and cortex
parcels are what engine rules were tuned on. These cases are training.synth.brain_scene (T1 or
T2 means, about 1.3 mm, skull kept or stripped) at seeds 4,000,000 + i, far from the training
streams, which draw such scenes from generator v8 on: in distribution for the network, new
anatomy for the engine's rules. Even seeds are lobes, odd seeds cortex parcels. `--tissues` and
`--aseg` label other brains by tissue, or by tissue and place (synth.aseg_labels); the network
trains on tissue labellings, and on aseg ones from generator v10 on (at other seeds). `--icbm`
is the one real brain among them: the ICBM152 template (tests/data, real T1 at 2 mm) labelled
by tissue and hemisphere (icbm_aseg), whose grey and white matter stand 3 SDs apart where the
procedural brains' often stand 1 to 2 apart.
"""

from __future__ import annotations

import argparse

import numpy as np

from harness import baselines, classical
from harness.loop import REPO, LabelledCase, load_labelled, print_box_scores

BASELINES = {"classical": classical.run, "boxfill": baselines.boxfill}

SEED_BASE = 4_000_000
SHAPE, SPACING = (96, 128, 112), np.array([1.5, 1.3, 1.3])  # (z, y, x) voxels and mm: a 144 x 166 x 146 mm head


LABELLINGS = {"parcels": 0, "tissues": 100, "aseg": 200}  # each draws at SEED_BASE + its offset + seed


def brain(seed: int, labelling: str = "parcels", finer: float = 1.0) -> LabelledCase:
    """Labels 1..K. "parcels": lobes (even seeds) or the white matter and cortex parcels (odd
    seeds); "tissues": CSF, grey and white matter (1, 2, 3); "aseg" (synth.aseg_labels): 8 deep
    nuclei, the left and right cortex, the left and right white matter, and the CSF in the brain.
    `finer`: the same head on a grid `finer` times as fine per axis, rendered there (its noise
    per fine voxel, as a scanner's; another brain, as the generator draws on the grid)."""
    from training import synth  # torch: imported only when procedural cases are built

    rng = np.random.default_rng(SEED_BASE + LABELLINGS[labelling] + seed)
    shape, spacing = SHAPE, SPACING
    if finer != 1.0:
        shape = tuple(round(n * finer) for n in SHAPE)
        spacing = SPACING * np.array(SHAPE) / np.array(shape)
    scene = {"parcels": "lobes" if seed % 2 == 0 else "cortex", "tissues": "tissues", "aseg": "aseg"}[labelling]
    labels, tissue = synth.brain_scene(rng, shape, spacing, scene, clefts=False)
    image = synth.render(rng, tissue, tissue > 0, spacing, "mr", means=synth.brain_means(rng, "mr"))
    name = (scene if labelling == "parcels" else labelling) + ("" if finer == 1.0 else f"_finer{finer:g}")
    return LabelledCase(f"MR_brain{seed}_{name}", image, labels, spacing[::-1].copy(), texts(scene, int(labels.max())))


ICBM_TISSUES = REPO / "tests/data/labelled/MR_ICBM152_tissue.npz"  # labels 1 grey, 2 white matter, 3 CSF


def icbm_aseg() -> LabelledCase:
    """The ICBM152 template labelled like aseg's cerebrum: the right and left cortex (labels 1, 2),
    the right and left white matter (3, 4), split at the brain's mean x, and the CSF (5), named
    as the organisers would. A hemisphere's cortex and white matter are twins; the CSF's box is
    about twice a hemisphere's (IoU about 0.5: app.views.alike_boxes)."""
    template = load_labelled(ICBM_TISSUES)
    tissue = template.gts
    brain_x = np.argwhere((tissue == 1) | (tissue == 2))[:, 2].mean()
    right = np.arange(tissue.shape[2])[None, None, :] < brain_x
    labels = np.zeros_like(tissue)
    for k, (t, half) in enumerate(((1, right), (1, ~right), (2, right), (2, ~right), (3, True)), 1):
        labels[(tissue == t) & half] = k
    names = ("Right cerebral cortex", "Left cerebral cortex", "Right cerebral white matter",
             "Left cerebral white matter", "Cerebrospinal fluid")
    texts = {k: f"{name} in brain MRI" for k, name in enumerate(names, 1)}
    return LabelledCase("MR_ICBM152_aseg", template.imgs, labels, template.spacing, texts)


NUCLEI_NAMES = ("thalamus", "caudate", "putamen", "pallidum")  # synth.NUCLEI_MM's, in order
ASEG_NAMES = (*(f"{side} {n}" for side in ("Right", "Left") for n in NUCLEI_NAMES), "Left cerebral cortex",
              "Right cerebral cortex", "Left cerebral white matter", "Right cerebral white matter",
              "Cerebrospinal fluid")  # aseg_labels' classes, in order


def texts(scene: str, classes: int) -> dict[int, str]:
    """Text prompts the way the organisers write them ("Gray matter in brain MRI"): what each
    label of a scene is; {} when the labels are not the scene's usual ones (a class too small)."""
    names = {"lobes": [f"Brain lobe {k}" for k in range(1, classes + 1)],
             "cortex": ["Cerebral white matter", *(f"Cortical parcel {k}" for k in range(1, classes))],
             "tissues": ["Cerebrospinal fluid", "Gray matter", "White matter"],
             "aseg": list(ASEG_NAMES)}[scene]
    return {k: f"{name} in brain MRI" for k, name in enumerate(names, 1)} if len(names) == classes else {}


def cases(labelling: str, seeds, finer: float = 1.0):
    """The brains of a labelling (LABELLINGS) at seeds range(*seeds), built one at a time, or
    "icbm": the real template alone (no seeds)."""
    if labelling == "icbm":
        yield icbm_aseg()
    else:
        for seed in range(*seeds):
            yield brain(seed, labelling, finer)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs=2, type=int, default=[0, 4], metavar=("FIRST", "END"))
    parser.add_argument("--detail", action="store_true", help="the shape and each class's DSC_AUC")
    parser.add_argument("--predictor", choices=sorted(BASELINES) + ["engine"], default="engine")
    parser.add_argument("--tissues", action="store_const", const="tissues", dest="labelling", default="parcels",
                        help="brains labelled by tissue (three twins)")
    parser.add_argument("--aseg", action="store_const", const="aseg", dest="labelling",
                        help="brains labelled like FreeSurfer's aseg (synth.aseg_labels: nuclei, cortex, "
                        "white matter, CSF)")
    parser.add_argument("--icbm", action="store_const", const="icbm", dest="labelling",
                        help="the ICBM152 template (real T1) labelled by tissue and hemisphere (icbm_aseg); no seeds")
    parser.add_argument("--finer", type=float, default=1.0,
                        help="brains on a grid this many times finer per axis (1.5: about 1 mm, the "
                        "independent set's MR brains), rendered there")
    args = parser.parse_args(argv)
    print_box_scores(cases(args.labelling, args.seeds, args.finer), detail=args.detail,
                     predict=BASELINES.get(args.predictor))


if __name__ == "__main__":
    main()
