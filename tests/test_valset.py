"""The validation set's rules on small crops: non-empty contiguous labels of the expected task types.

The CT sources live in ../shared/samples (absent on some machines: those tests skip); the two MR
sources are also in tests/data/labelled."""

import json

import numpy as np
import pytest

from harness import eval as harness_eval
from harness import loop, valset


def source(name):
    path = valset.find_source(name)
    if path is None:
        pytest.skip(f"{name} not available (../shared/samples absent)")
    return path


def check(case, expected_tasks):
    labels = np.unique(case.gts)
    assert np.array_equal(labels[labels > 0], np.arange(1, case.num_classes + 1))
    assert [c["task"] for c in case.classes] == expected_tasks
    for c in case.classes:
        assert (case.gts == c["label"]).sum() == c["voxels"] >= valset.MIN_VOXELS
        assert 0 < c["box_fill"] <= 1
    assert case.imgs.dtype == np.uint8 and case.imgs.shape == case.gts.shape


def test_chest_ct_rules_on_a_crop():
    d = valset.load_npz(source("CT_PyRadiomics_lung1"))
    imgs, lesion, spacing = valset.downsample(d["imgs"][14:38], d["gts"][14:38] > 0, d["spacing"], 4)
    assert np.allclose(spacing, np.asarray(d["spacing"]) * [4, 4, 1])
    case = valset.chest_ct("CT_test", imgs, lesion, spacing, "crop")
    check(case, ["organ", "organ", "organ", "thin", "lesion"])
    names = [c["name"] for c in case.classes]
    right, left = (np.argwhere(case.gts == names.index(n) + 1)[:, 2].mean() for n in ("lung_right", "lung_left"))
    assert right < left  # the lung at low x is the right one (LPS array order)
    bone = case.gts == names.index("bone") + 1
    assert (case.imgs[bone] >= valset.BONE_LEVEL).all()


def test_lung_pair_split_cuts_a_bridge():
    mask = np.zeros((3, 30, 50), bool)
    mask[:, 5:25, 3:20] = True
    mask[:, 5:25, 30:47] = True
    mask[:, 14:16, 20:30] = True  # a 2-voxel airway joining them
    a, b = valset.split_pair(mask, (5.0, 1.0, 1.0))
    assert a.sum() > 900 and b.sum() > 900 and not (a & b).any()
    assert np.argwhere(a)[:, 2].max() < np.argwhere(b)[:, 2].min()


def test_abdomen_ct_rules_on_a_crop():
    d = valset.load_npz(source("CT_AMOS_amos_0018"))
    imgs, _, spacing = valset.downsample(d["imgs"][36:], np.zeros(d["imgs"][36:].shape, bool), d["spacing"], 4)
    case = valset.abdomen_ct("CT_test", imgs, spacing, "crop")
    check(case, ["organ", "thin", "thin"])
    assert [c["name"] for c in case.classes] == ["body", "bone", "lung_bases"]


def test_icbm_tissue_is_kept_and_parcels_touch_within_hemispheres(tmp_path):
    from scipy import ndimage

    path = source("MR_ICBM152_tissue")
    tissue, parcels, cortex = valset.icbm_cases(path)
    truth = loop.load_labelled(path).gts
    check(tissue, ["thin", "organ", "thin"])
    assert np.array_equal(tissue.gts, truth)
    valset.write(tissue, tmp_path)  # with the real input's text prompts, for iteration 0
    written = loop.load_labelled(tmp_path / f"{tissue.name}.npz")
    assert written.texts == {1: "Gray matter in brain MRI", 2: "White matter in brain MRI",
                             3: "Cerebrospinal fluid in brain MRI"}
    for case, region in ((parcels, (truth == 1) | (truth == 2)), (cortex, truth == 1)):
        check(case, ["parcel"] * 2 * valset.PARCELS_PER_SIDE)
        assert np.array_equal(case.imgs, tissue.imgs)
        covered = case.gts > 0
        assert not (covered & ~region).any() and (region & ~covered).sum() < 0.001 * region.sum()  # islands only
        mid = case.notes["midline_x"]
        xs = np.arange(truth.shape[2])
        for c in case.classes:
            mask = case.gts == c["label"]
            assert valset.largest_component(mask, connectivity=26).sum() == c["voxels"]  # one piece
            side = xs[np.any(mask, axis=(0, 1))]
            assert (side < mid).all() if c["name"].removeprefix("ctx").startswith("R") else (side >= mid).all()
            ring = ndimage.binary_dilation(mask) & covered & ~mask
            assert ring.any()  # touches another parcel: adjacent regions of one intensity


def test_brain2_head_and_real_lesion():
    path = source("MR_PyRadiomics_brain2")
    case = valset.build_brain2(path)
    check(case, ["organ", "lesion"])
    assert case.classes[1]["voxels"] == int((loop.load_labelled(path).gts > 0).sum())


def test_procedural_cases_are_deterministic_and_box_less(tmp_path):
    nuclei = valset.nuclei_case(count=8, shape=(12, 48, 48))
    again = valset.nuclei_case(count=8, shape=(12, 48, 48))
    assert np.array_equal(nuclei.gts, again.gts) and np.array_equal(nuclei.imgs, again.imgs)
    assert not nuclei.box and nuclei.num_classes >= 5
    check(nuclei, ["instance"] * nuclei.num_classes)
    trees = valset.vessel_trees(np.random.default_rng(0), (24, 48, 48), (1.0, 0.7, 0.7), trees=2)
    assert set(np.unique(trees)) <= {0, 1, 2} and (trees > 0).any()


def test_written_set_declares_modes_for_the_harness(tmp_path):
    valset.main(["--out", str(tmp_path), "--only", "brain2"])
    case = valset.nuclei_case(count=6, shape=(10, 40, 40))
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    tasks["cases"][case.name] = valset.write(case, tmp_path)
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    loaded = loop.load_tasks(tmp_path)
    assert loaded["MR_valset_brain2_head"]["box"] is True and loaded[case.name]["box"] is False
    assert [c["task"] for c in loaded["MR_valset_brain2_head"]["classes"]] == ["organ", "lesion"]
    for name in loaded:
        loop.load_labelled(tmp_path / f"{name}.npz")  # contiguous 1..K, loadable by the harness
    # a box-less case declared in tasks.json runs without boxes even under a name the prefix rule would box
    loaded["CT_declared"] = {"box": False}
    assert not loop.default_box_mode("CT_declared", loaded) and loop.default_box_mode("CT_other", loaded)
    assert not loop.default_box_mode("Microscopy_x") and loop.default_box_mode("CT_x")
    cases = harness_eval.find_cases([tmp_path], None)
    jobs = harness_eval.jobs_for(cases, ["boxfill"], no_box=False, both=True)
    assert {(p.stem, box) for p, box, _ in jobs} == {("MR_valset_brain2_head", True), ("MR_valset_brain2_head", False),
                                                     (case.name, False)}


def test_in_process_evaluation_matches_the_entrypoint(tmp_path):
    """--in-process (tuning) must score what predict.sh scores: same files, same reading and writing."""
    case = valset.nuclei_case(count=4, shape=(8, 32, 32))
    data = tmp_path / "data"
    data.mkdir()
    (data / "tasks.json").write_text(json.dumps({"cases": {case.name: valset.write(case, data)}}))
    scores = {}
    for flag in ([], ["--in-process"]):
        out = tmp_path / ("in" if flag else "proc")
        harness_eval.main(["--data", str(data), "--predictor", "boxfill_clicks", "--out", str(out), *flag])
        (record,) = json.loads((out / "results.json").read_text())
        scores[bool(flag)] = [round(it["dsc"], 6) for it in record["iterations"]]
    assert scores[True] == scores[False] and len(scores[True]) == loop.CLICK_ITERATIONS
    assert scores[True][-1] > 0  # clicks painted: the predictor really ran
