"""Training code: generator, interaction simulation, a learning step, resume, DDP, manifest."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import edt
import numpy as np
import pytest
import torch
from scipy import ndimage

from app.models.unet3d import build_unet
from app.views import ClassView, class_views
from training import interaction, synth, train
from training.interaction import (
    MARGIN,
    jittered_box,
    lost_to_others,
    other_click,
    others_previous,
    perturbed_mask,
    sampled_click,
    target_weights,
)

ROOT = Path(__file__).resolve().parents[1]
CUBE = np.ones((3, 3, 3), bool)  # dilation by one voxel along every axis at once


@pytest.mark.parametrize("look", synth.LOOKS)
def test_generator_is_deterministic_and_labels_are_sane(look):
    a = synth.generate(np.random.default_rng(7), look)
    b = synth.generate(np.random.default_rng(7), look)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.image.dtype == np.uint8 and a.labels.dtype == np.uint8 and a.image.shape == a.labels.shape
    present = np.unique(a.labels)
    assert present[0] == 0 and np.array_equal(present, np.arange(len(present)))  # contiguous 0..K
    assert all((a.labels == k).sum() >= 20 for k in present[1:])
    assert a.image.size <= 160 * 256 * 256 and np.all(a.spacing > 0)  # synth.random_grid's largest grid
    if look not in ("ct", "mr"):
        assert a.no_box == (look == "microscopy")


def test_no_box_ct_and_mr_cases_are_thin_tubes():
    """CT/MR cases without boxes must be vessel trees: every class thin, not a blob."""
    found = 0
    for seed in range(40):
        case = synth.generate(np.random.default_rng(seed), "ct" if seed % 2 else "mr")
        if not case.no_box:
            continue
        found += 1
        for k in range(1, case.labels.max() + 1):
            depth = edt.edt((case.labels == k).astype(np.uint8), anisotropy=tuple(case.spacing))
            assert depth.max() <= 3.5 * case.spacing[1:].mean() + case.spacing.max()
    assert found >= 2


def test_tissue_scene_interleaves_classes_inside_the_body():
    rng = np.random.default_rng(2)
    spacing = np.array([2.0, 1.0, 1.0])
    labels, body = synth.tissue_scene(rng, (32, 48, 48), spacing)
    assert labels.max() >= 2 and not labels[~body].any()
    image = synth.render(rng, labels, body, spacing, "mr", may_share=False)
    means = [image[labels == k].mean() for k in range(1, labels.max() + 1)]
    assert len(set(np.round(means))) == len(means)  # distinct intensities: the classes are visible


def test_trunk_scene_is_a_ct_body_that_fills_the_scan_around_dark_lungs():
    """The large CT structures: a body running out of the scan at both z ends, with holes where
    the lungs and bone are, lungs darker than the body and bone brighter, in either window."""
    spacing = np.array([2.5, 1.2, 1.2])
    checked = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        labels, tissue = synth.trunk_scene(rng, (40, 80, 80), spacing)
        image = synth.render(rng, tissue, tissue > synth.OUTSIDE, spacing, "ct", means=synth.trunk_means(rng, tissue))
        body = labels == 1
        lungs = tissue == synth.LUNG
        if not (body.any() and lungs.any()) or body.sum() < 0.2 * body.size:
            continue
        assert body[0].any() and body[-1].any()  # cut by the field of view, like a real trunk
        assert not (body & np.isin(tissue, (synth.LUNG, synth.BONE, synth.GAS))).any()
        soft = image[tissue == synth.SOFT].mean()
        assert image[lungs].mean() < soft - 30 and image[tissue == synth.OUTSIDE].mean() < soft - 30
        if (tissue == synth.BONE).sum() > 50:
            assert image[tissue == synth.BONE].mean() > soft
        checked += 1
    assert checked >= 3


def test_brain_scene_parcels_mix_a_folded_grey_ribbon_with_white_matter():
    """The parcellated-brain task: lobes hold both grey and white matter, cortex parcels only
    grey over one white-matter class, CSF lies in sulci inside the brain, and the tissues are
    told apart by intensity (T1 or T2 order), not by the labels."""
    spacing = np.array([1.5, 1.3, 1.3])
    for seed in range(3):
        rng = np.random.default_rng(seed)
        labels, tissue = synth.brain_scene(rng, (48, 64, 56), spacing, "lobes", clefts=seed == 1)
        assert labels.max() >= 3
        for k in range(1, labels.max() + 1):
            kinds = np.bincount(tissue[labels == k], minlength=synth.WHITE + 1)
            assert kinds[synth.GREY] > 0 and kinds[synth.WHITE] > 0 and kinds[synth.CSF] == 0
        inside = ndimage.distance_transform_edt(tissue >= synth.CSF, sampling=spacing)
        assert (inside[tissue == synth.CSF] > 4).any()  # sulci and ventricles cut into the parenchyma
        image = synth.render(rng, tissue, tissue > 0, spacing, "mr", means=synth.brain_means(rng, "mr"))
        grey, white, fluid = (image[tissue == t].mean() for t in (synth.GREY, synth.WHITE, synth.CSF))
        assert min(abs(grey - white), abs(grey - fluid)) > 5 and (fluid < grey < white or fluid > grey > white)
        labels, tissue = synth.brain_scene(rng, (48, 64, 56), spacing, "cortex")
        assert set(np.unique(tissue[labels == 1])) == {synth.WHITE}
        assert all(set(np.unique(tissue[labels == k])) == {synth.GREY} for k in range(2, labels.max() + 1))


def test_aseg_brains_scale_their_nuclei_to_the_head_and_are_drawn_for_training(monkeypatch):
    """Generator v10: the aseg labelling (nuclei, cortex and white matter per side, CSF) on a
    training grid half the size of harness.brains' head keeps its nuclei inside the brain (offsets
    scaled per axis to the volume's extent), deep nuclei at grey matter's level and the last pair
    at white matter's; and brain scenes without a given labelling draw it among the others."""
    spacing = np.array([1.5, 1.3, 1.3])
    for seed in range(2):
        rng = np.random.default_rng(seed)
        labels, tissue = synth.brain_scene(rng, (48, 64, 56), spacing, "aseg")
        assert labels.max() == 13
        assert all(set(np.unique(tissue[labels == k])) == {synth.GREY} for k in (1, 2, 3, 5, 6, 7))
        assert all(set(np.unique(tissue[labels == k])) == {synth.WHITE} for k in (4, 8, 11, 12))
        assert set(np.unique(tissue[labels == 13])) == {synth.CSF}
        nuclei_x = [np.argwhere(labels == k)[:, 2].mean() for k in (1, 5)]  # each side's thalamus
        assert nuclei_x[0] < 28 < nuclei_x[1]
    drawn = []
    label_aseg = synth.aseg_labels
    monkeypatch.setattr(synth, "aseg_labels", lambda *a: drawn.append(None) or label_aseg(*a))
    rng = np.random.default_rng(5)
    for _ in range(12):
        synth.brain_scene(rng, (24, 32, 28), np.full(3, 5.0))
    assert 0 < len(drawn) < 12


def test_a_coarse_brain_keeps_grey_matter_between_its_sulci_and_the_white_matter():
    """On a 3 mm grid the grey ribbon is at least 1.5 voxels deep (generator v9): no white-matter
    voxel shares a face or an edge with the CSF of a sulcus or of the brain's surface, so partial
    volume mixes grey with each, not CSF with white."""
    spacing = np.full(3, 3.0)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        _, tissue = synth.brain_scene(rng, (48, 56, 52), spacing, "tissues", clefts=False)
        brain = tissue >= synth.CSF
        depth = edt.edt(brain.astype(np.uint8), anisotropy=(3.0, 3.0, 3.0))
        shallow_csf = (tissue == synth.CSF) & (depth < 8.0)  # sulci and the surface, not the ventricles
        assert shallow_csf.any()
        beside = ndimage.binary_dilation(shallow_csf, ndimage.generate_binary_structure(3, 2))
        assert not (beside & (tissue == synth.WHITE)).any()


def test_truncated_cases_end_inside_an_object():
    rng = np.random.default_rng(4)
    cuts = 0
    for _ in range(6):
        whole = synth.generate(rng, "ct")
        if whole.no_box:
            continue
        cut = synth.truncate(rng, whole)
        if cut is whole:  # a cut that would leave fewer than 8 slices keeps the case (test below)
            continue
        cuts += 1
        assert cut.image.shape == cut.labels.shape and cut.image.shape[0] < whole.image.shape[0]
        assert cut.labels[0].any() or cut.labels[-1].any()  # some object runs out of the scan in z
        assert cut.labels.max() == len(np.unique(cut.labels)) - 1
    assert cuts >= 4


def test_a_cut_that_leaves_only_slivers_keeps_the_whole_case():
    """A label cut below the clickable size is dropped; a cut leaving no label must not be used
    (a training run died on such a case: no label to draw)."""
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[:, 5, 5] = 1  # 20 voxels: any cut leaves fewer than _relabel keeps
    case = synth.SynthCase(np.zeros_like(labels), labels, np.ones(3), "ct", False)
    for seed in range(10):
        assert synth.truncate(np.random.default_rng(seed), case).labels.max() == 1


def test_clicks_land_on_the_error_with_the_right_sign():
    rng = np.random.default_rng(0)
    truth = np.zeros((20, 20, 20), bool)
    truth[5:15, 5:15, 5:15] = True
    pred = truth.copy()
    pred[5:9] = False  # missed part: fg clicks
    pred[0:3, 0:3, 0:3] = True  # small false positive
    for _ in range(20):
        zyx, is_fg = sampled_click(rng, pred, truth, np.ones(3))
        assert pred[zyx] != truth[zyx] and is_fg == truth[zyx]


def test_boxes_and_perturbed_masks_stay_plausible():
    rng = np.random.default_rng(1)
    truth = np.zeros((20, 30, 30), bool)
    truth[6:12, 8:20, 10:22] = True
    lo, hi = jittered_box(rng, truth).bounds()
    assert np.all(lo <= (6, 8, 10)) and np.all(hi >= (11, 19, 21))
    mask = perturbed_mask(rng, truth, np.array([2.0, 1.0, 1.0]))
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert mask.shape == truth.shape and 0.2 < dice < 1.0


def test_other_classes_click_inside_their_objects_and_claim_the_targets_voxels():
    rng = np.random.default_rng(2)
    other = np.zeros((20, 30, 30), bool)
    other[4:16, 5:15, 5:25] = True
    near = np.zeros_like(other)
    near[4:16, 12:20, 5:25] = True  # the target's mask took three rows of the other object
    box = jittered_box(rng, other)
    lo, hi = box.bounds()
    clicks = [other_click(rng, other, near, box) for _ in range(200)]
    positives = [zyx for zyx, is_fg in clicks if is_fg]
    negatives = [zyx for zyx, is_fg in clicks if not is_fg]
    assert all(other[zyx] for zyx in positives) and not any(other[zyx] for zyx in negatives)
    assert all(np.all(lo - MARGIN <= zyx) and np.all(np.array(zyx) <= hi + MARGIN) for zyx in negatives)
    assert 0.45 < len(positives) / len(clicks) < 0.75
    taken = np.mean([near[zyx] for zyx in positives])
    assert 0.4 < taken < 0.8  # half drawn where the target took them, else anywhere (3 of 10 rows taken)


def test_the_other_classes_previous_masks_are_their_truths_moved_a_little():
    rng = np.random.default_rng(4)
    classes = np.zeros((24, 30, 30), np.uint8)
    classes[2:12, 2:28, 2:28] = 1
    classes[12:22, 2:28, 2:15] = 2
    classes[12:22, 2:28, 15:28] = 3
    moved, missing = 0, 0
    for _ in range(20):
        held = others_previous(rng, classes, 2)
        assert held.shape == classes.shape and held.dtype == np.uint8
        assert not (held == 2).any() and set(np.unique(held)) <= {0, 1, 3}
        for label in (1, 3):
            if not (held == label).any():
                missing += 1
                continue
            near = ndimage.binary_dilation(classes == label, CUBE, iterations=3)
            assert (held == label)[~near].sum() == 0  # displaced by at most 3 voxels per axis
            moved += int(((held == label) != (classes == label)).any())
    assert moved > 20 and missing < 12


def test_what_the_target_missed_mostly_goes_to_its_nearest_neighbour():
    rng = np.random.default_rng(5)
    classes = np.zeros((20, 30, 30), np.uint8)
    classes[:, :, :10], classes[:, :, 10:20], classes[:, :, 20:] = 1, 2, 3
    truth = classes == 2
    prev = truth.copy()
    prev[:, :, 10:13] = False  # missed on the side of class 1
    prev[:, :, 18:20] = False  # and on the side of class 3
    held = np.where(truth, 0, classes).astype(np.uint8)
    given = 0
    for _ in range(40):
        out = lost_to_others(rng, held, truth, prev)
        assert np.array_equal(out[~truth], held[~truth]) and not out[prev].any()
        if out[:, :, 10:13].any():
            given += 1
            assert (out[:, :, 10:13] == 1).all() and (out[:, :, 18:20] == 3).all()
        else:
            assert not out[truth].any()
    assert 20 < given < 38  # three times in four
    assert lost_to_others(rng, held, truth, None) is held


def test_a_container_of_two_or_more_boxes_is_the_target_more_often():
    """A white matter holding two parcels weighs CONTAINER_WEIGHT; the parcels and a box-sharing
    neighbour (contained by nothing, holding nothing) weigh 1."""
    shape = (20, 40, 40)
    white, left, right = (np.zeros(shape, bool) for _ in range(3))
    white[:, :, :] = True
    left[5:15, 5:20, 5:18] = True
    right[5:15, 5:20, 20:32] = True
    weights = target_weights([white & ~left & ~right, left, right])
    assert weights[0] == pytest.approx(3 * weights[1]) and weights[1] == pytest.approx(weights[2])
    assert weights.sum() == pytest.approx(1.0)
    assert np.allclose(target_weights([left, right]), 0.5)


def test_simulated_rounds_see_the_case_as_the_engine_does():
    """The target's view in training is class_views's view of the same multi-class case:
    the other classes' boxes (parcels, twins) and their clicks of every round."""
    from app.io import Case

    cfg = train.TrainConfig(patch=16, precision="fp32", max_rounds=2)
    case = synth.generate(np.random.default_rng(7), "mr")
    ids = np.unique(case.labels)[1:]
    assert len(ids) > 2
    segmenter = train.segmenter_for(build_unet(), case, cfg)
    seen_rounds, others_seen = set(), 0
    for seed in range(8):
        truth, view = train.simulate(np.random.default_rng(seed), case, segmenter, cfg)
        target = int(ids[[np.array_equal(case.labels == i, truth) for i in ids].index(True)])
        assert view.label == target and len(view.others) == len(ids) - 1
        rounds = len(view.prompts.order) - (view.prompts.box is None)
        seen_rounds.add(rounds)
        assert all(len(o.order) == len(view.prompts.order) for o in view.others)  # every class clicks each round
        assert all(case.labels[q] not in (0, target) for o in view.others for q in o.fg)
        prompts = list(view.others)
        prompts.insert(target - 1, view.prompts)
        prev_pred = None if not view.has_prev else view.prev_mask().astype(np.uint8) * np.uint8(target)
        file_case = Case("MR_t.npz", case.image, case.spacing, prompts, prev_pred, rounds, view.box is not None)
        engine_view = class_views(file_case)[target - 1]
        assert (engine_view.parcel, engine_view.lining, engine_view.holds_a_box) == (
            view.parcel, view.lining, view.holds_a_box)
        assert engine_view.negatives == view.negatives and engine_view.claimed == view.claimed
        assert len(engine_view.twins) == len(view.twins)
        if rounds:  # the others hold their voxels of the previous segmentation, near their truths or
            # where the target missed its own
            held = (view.prev_pred != 0) & (view.prev_pred != target)
            near = ndimage.binary_dilation((case.labels != 0) & (case.labels != target), CUBE, iterations=3)
            assert held.any() and not (held & ~near & (case.labels != target)).any()
            others_seen += 1
    assert len(seen_rounds) > 1 and others_seen


def _fixed_batch(cfg, model):
    rng = np.random.default_rng(3)
    return train.make_batch(rng, cfg, model, None, train.CasePool(size=2))


def test_training_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = train.TrainConfig(patch=16, zoomed_patch=16, batch=2, max_rounds=1)
    model = build_unet()
    [(x, y)] = _fixed_batch(cfg, model)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = train.loss_of(model(x), y, 1.0)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_cpu_bf16_is_refused_where_the_deepest_map_is_two_voxels(monkeypatch):
    """torch 2.13's bf16 conv3d weight gradient on CPU is garbage on 2-voxel-deep maps: the
    smoke run's 16^3 patch trains in fp32 even on a native-bf16 CPU, the real 48^3 one in bf16."""
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)
    model = build_unet()
    assert not train.use_bf16(train.TrainConfig(patch=16), model)
    assert train.use_bf16(train.TrainConfig(patch=48), model)
    assert train.use_bf16(train.TrainConfig(patch=16, precision="bf16"), model)  # asked for, given
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    assert not train.use_bf16(train.TrainConfig(patch=48), model)


def test_a_non_finite_gradient_skips_its_update(tmp_path, monkeypatch, capsys):
    """One bad batch (here: a NaN loss at step 2) costs its own update, not every weight."""
    calls = []

    def nan_at_second_step(logits, target):
        calls.append(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(train, "dice_bce", nan_at_second_step)
    out = tmp_path / "run"
    train.main(train.parse_args(["--smoke", "--threads", "1", "--max-steps", "3", "--val-cases", "1",
                                 "--eval-minutes", "1000", "--out-dir", str(out), "--export", str(out / "e.pt")]))
    assert "step 2: non-finite gradient norm, update skipped (1 so far)" in capsys.readouterr().out
    state = torch.load(out / "ckpt.pt", weights_only=False)
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values())


def _run(args, env=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_smoke_run_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    common = ["-m", "training.train", "--smoke", "--out-dir", str(out), "--export", str(out / "e.pt"),
              "--val-cases", "1"]
    first = _run([*common, "--max-steps", "2"])
    assert first.returncode == 0, first.stderr
    state = torch.load(out / "ckpt.pt", weights_only=False)
    assert state["step"] == 2
    second = _run([*common, "--max-steps", "3"])
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stdout and "at step 2" in second.stdout
    resumed = torch.load(out / "ckpt.pt", weights_only=False)
    assert resumed["step"] == 3 and resumed["rng"][0] != state["rng"][0]
    exported = torch.load(out / "e.pt", weights_only=False)
    model = build_unet(exported["model_config"])
    model.load_state_dict({k: v.float() for k, v in exported["model"].items()})


def test_same_checkpoint_restores_the_same_state(tmp_path):
    model = build_unet()
    optim = torch.optim.AdamW(model.parameters())
    rng = np.random.default_rng(5)
    rng.random(3)
    path = tmp_path / "ckpt.pt"
    train.save_checkpoint(path, model, optim, 7, rng, None, train.TrainConfig(), distributed=False)
    ckpt = torch.load(path, weights_only=False)
    other = build_unet()
    other.load_state_dict(ckpt["model"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    restored = np.random.default_rng(0)
    restored.bit_generator.state = ckpt["rng"][0]
    assert restored.random() == rng.random()


def test_two_process_gloo_run(tmp_path):
    out = tmp_path / "ddp"
    result = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training.train",
                   "--smoke", "--threads", "1", "--out-dir", str(out), "--export", str(out / "e.pt"),
                   "--val-cases", "1"],
                  env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[:3000]  # the failing rank's own error comes first
    assert (out / "e.pt").exists() and len(torch.load(out / "ckpt.pt", weights_only=False)["rng"]) == 2


def test_manifest_matches_the_weight_files():
    weights = ROOT / "weights"
    files = sorted(p.name for p in weights.glob("*.pt"))
    manifest_path = weights / "MANIFEST.json"
    if not files:
        assert not manifest_path.exists() or json.loads(manifest_path.read_text()) == {}
        return
    manifest = json.loads(manifest_path.read_text())
    assert sorted(manifest) == files
    total = 0
    for name, item in manifest.items():
        data = (weights / name).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == item["sha256"] and item["bytes"] == len(data)
        for key in ("parameters", "steps", "data", "training_config", "training_code_commit", "machine"):
            assert item.get(key), f"{name}: manifest lacks {key}"
    assert total <= 50e6


def test_training_rounds_are_the_engines_predictions():
    """One prediction path: a simulated round equals engine.run on the same prompts."""
    from app import engine
    from app.experts import Expert
    from app.io import Case, ClassPrompts
    from harness.official import error_click

    torch.manual_seed(0)
    cfg = train.TrainConfig(patch=16, zoomed_patch=24, precision="fp32")
    model = build_unet()
    case = synth.generate(np.random.default_rng(5), "ct")
    truth = case.labels == 1
    box = jittered_box(np.random.default_rng(0), truth)
    segmenter = train.segmenter_for(model, case, cfg)
    experts = (Expert.from_model(model, 16, "cpu", bf16=False, zoomed_patch=24), None)
    prev, fg, bg, order = None, [], [], []
    for _ in range(2):
        mask = segmenter.segment(ClassView.single(box, fg, bg, order, prev))[0].mask_full()
        file_case = Case("CT_t.npz", case.image, case.spacing, [ClassPrompts(box, list(fg), list(bg), list(order))],
                         None if prev is None else prev.astype(np.uint8), len(order), True)
        out = engine.run(file_case, None, deadline=float("inf"), experts=experts)
        assert np.array_equal(out == 1, mask)
        click = error_click(mask, truth)
        (fg if click[1] else bg).append(click[0])
        order.append("fg" if click[1] else "bg")
        prev = mask


def test_a_global_sample_is_the_engines_next_input(monkeypatch):
    """The trained input is the one the engine would build next: the zoomed patch for an object
    the trained patch would zoom out, and the engine's negatives (the other classes' positive
    clicks too), so the network learns on what it meets at inference."""
    cfg = train.TrainConfig(patch=16, zoomed_patch=24, precision="fp32", max_rounds=2)
    case = synth.generate(np.random.default_rng(7), "mr")
    seen = {}
    simulate, encode = train.simulate, train.encode

    def spy_encode(image, roi, spacing, box, fg, bg, *rest, **kwargs):
        seen["bg"] = list(bg)
        return encode(image, roi, spacing, box, fg, bg, *rest, **kwargs)

    monkeypatch.setattr(train, "encode", spy_encode)
    sizes, others_clicked = set(), False
    for seed in range(6):
        result = simulate(np.random.default_rng(seed), case, train.segmenter_for(build_unet(), case, cfg), cfg)
        monkeypatch.setattr(train, "simulate", lambda *args, result=result: result)
        x, y = train.global_sample(np.random.default_rng(seed), case, build_unet(), cfg)
        view = result[1]
        assert seen["bg"] == view.negatives
        others_clicked |= len(view.negatives) > len(view.prompts.bg)
        assert y.shape[1:] == x.shape[1:] and x.shape[1:] in ((16,) * 3, (24,) * 3)
        sizes.add(x.shape[1])
    assert others_clicked and 24 in sizes


def test_look_weights_shift_the_procedural_mix():
    assert np.allclose(train.look_probabilities(""), 1 / len(synth.LOOKS))
    w = train.look_probabilities("ct=3,microscopy=0")
    assert w[synth.LOOKS.index("ct")] == 3 * w[synth.LOOKS.index("mr")] and w[synth.LOOKS.index("microscopy")] == 0
    rng = np.random.default_rng(0)
    p = train.CasePool(looks="ct=3").look_p
    draws = [synth.LOOKS[int(rng.choice(len(synth.LOOKS), p=p))] for _ in range(700)]
    assert 0.35 < draws.count("ct") / len(draws) < 0.5  # 3/7 expected
    with pytest.raises(ValueError, match="unknown look"):
        train.look_probabilities("xray=2")


def test_a_local_run_simulates_with_the_global_expert_it_ships_with(tmp_path):
    """A local expert's rounds start from the shipped global expert's masks, as in the engine
    with both files; the live model serves only the native windows."""
    from app import engine
    from app.experts import Expert
    from app.io import Case, ClassPrompts

    torch.manual_seed(0)
    shipped, live = build_unet(), build_unet()
    path = tmp_path / "global_expert.pt"
    train.export(shipped, train.TrainConfig(patch=16), 1, str(path))
    cfg = train.TrainConfig(expert="local", patch=16, zoomed_patch=24, precision="fp32", global_weights=str(path))
    case = synth.generate(np.random.default_rng(5), "ct")
    truth = case.labels == 1
    box = jittered_box(np.random.default_rng(0), truth)
    segmenter = train.segmenter_for(live, case, cfg)
    assert segmenter.local_expert.model is live and segmenter.global_expert.model is not live
    fg = [tuple(int(v) for v in np.argwhere(truth)[0])]
    view = ClassView.single(box, fg, [], ["fg"], truth)
    mask = segmenter.segment(view)[0].mask_full()
    experts = (Expert.load(path, torch.device("cpu"), 24), Expert.from_model(live, 16, "cpu", bf16=False))
    file_case = Case("CT_t.npz", case.image, case.spacing, [ClassPrompts(box, fg, [], ["fg"])],
                     truth.astype(np.uint8), 1, True)
    assert np.array_equal(engine.run(file_case, None, deadline=float("inf"), experts=experts) == 1, mask)
    missing = train.TrainConfig(expert="local", patch=16, global_weights=str(tmp_path / "x.pt"))
    with pytest.raises(SystemExit, match="no such file"):
        train.segmenter_for(live, case, missing)


def test_the_clicked_error_is_the_wrong_piece_under_the_click():
    truth = np.zeros((12, 12, 12), bool)
    truth[2:6, 2:6, 2:6] = True
    prev = np.zeros_like(truth)
    prev[8:11, 8:11, 8:11] = True  # a false positive apart from the missed cube
    missed = interaction.clicked_error(prev, truth, (3, 3, 3))
    assert (missed == truth).all()
    assert (interaction.clicked_error(prev, truth, (9, 9, 9)) == prev).all()
    assert not interaction.clicked_error(prev, truth, (0, 0, 0)).any()  # a click on a right voxel
    assert not interaction.clicked_error(prev, truth, None).any()


def test_the_click_term_counts_only_the_marked_error():
    target = torch.zeros(1, 1, 4, 4, 4)
    marked = torch.zeros(1, 1, 4, 4, 4)
    marked[..., :2, :, :] = 1
    y = torch.cat([target, marked], 1)
    right = torch.full((1, 1, 4, 4, 4), -5.0)
    wrong_outside = right.clone()
    wrong_outside[..., 2:, :, :] = 5.0
    wrong_inside = right.clone()
    wrong_inside[..., :2, :, :] = 5.0
    plain = train.dice_bce(wrong_outside, target)
    assert torch.isclose(train.loss_of(wrong_outside, y, 0.0), plain)
    assert torch.isclose(train.loss_of(wrong_outside, y, 2.0), plain, atol=0.02)
    assert train.loss_of(wrong_inside, y, 2.0) > train.dice_bce(wrong_inside, target) + 5.0


def test_a_sample_marks_the_error_its_newest_click_is_on(monkeypatch):
    """Channel 1 of a sample's target holds the error the trained round's click marks: inside the
    truth for a positive click, outside it for a negative one; nothing without a new click."""
    cfg = train.TrainConfig(patch=16, zoomed_patch=24, precision="fp32", max_rounds=3, click_weight=1.0)
    case = synth.generate(np.random.default_rng(7), "mr")
    marked_rounds = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        truth, view = train.simulate(rng, case, train.segmenter_for(build_unet(), case, cfg), cfg)
        monkeypatch.setattr(train, "simulate", lambda *args, result=(truth, view): result)
        for sample in (train.global_sample, train.local_sample):
            x, y = sample(np.random.default_rng(seed), case, build_unet(), cfg)
            assert y.shape == (2, *x.shape[1:]) and set(torch.unique(y[1]).tolist()) <= {0.0, 1.0}
            click = train.newest_click(view)
            if click is None:
                assert not y[1].any()
            elif y[1].any():
                marked_rounds += 1
                on_truth = y[0][y[1] > 0]
                assert (on_truth == (1.0 if view.prompts.newest_click[1] else 0.0)).float().mean() > 0.9
            unweighted = replace(cfg, click_weight=0.0)
            assert not sample(np.random.default_rng(seed), case, build_unet(), unweighted)[1][1].any()
        monkeypatch.undo()
    assert marked_rounds


def test_each_look_draws_its_scenes_with_probabilities_that_sum_to_one():
    assert set(synth.SCENE_P) == set(synth.LOOKS)
    for look, scenes in synth.SCENE_P.items():
        assert sum(p for _, p in scenes) == pytest.approx(1.0), look
    assert dict(synth.SCENE_P["mr"])[synth.brain_scene] >= 0.4  # the independent set's MR: parcellated brains
    assert synth.SCENE_P["microscopy"] == ((synth.cell_scene, 1.0),)
    assert sum(synth.BRAIN_LABELLING_P) == pytest.approx(1.0)
