"""The real-data layer: index (bad files, refresh), sampling balance, crops, cache, per-rank streams."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from tests.fakedata import write_fake_dataset
from training import index as index_mod
from training.data import (
    BUNDLED_SPLIT,
    LabelledData,
    bundled_folders,
    crop_window,
    read_split,
    resume_start,
)
from training.index import build_index, label_stats, to_uint8
from training.synth import SynthCase


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake") / "train"
    written = write_fake_dataset(root)
    cache = tmp_path_factory.mktemp("cache")
    return root, cache, written


@pytest.fixture(scope="module")
def data(fake):
    root, cache, _ = fake
    return LabelledData([root], cache_dir=cache, verbose=False)


def test_fake_set_has_the_organisers_layout(fake):
    written = fake[2]
    assert len(written["good"]) >= 100 and len(written["bad"]) >= 2
    assert set(written["counts"]) == {"CT", "MR", "PET", "US", "Microscopy"}
    for rel in written["good"][::10]:
        modality, dataset, name = rel.split("/")
        assert name.startswith(f"{modality}_{dataset}_")


def test_index_describes_cases_and_lists_each_bad_file_once(fake, capsys):
    root, cache, written = fake
    index_mod.main([str(root), "--cache-dir", str(cache), "--workers", "2"])
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == len(written["bad"])
    for rel, keyword in written["bad"].items():
        assert sum(rel in line and keyword in line for line in skipped) == 1, (rel, skipped)
    index = index_mod.load_index(root, cache)
    assert sorted(c.rel for c in index.cases) == written["good"]
    by_modality = {m: sum(c.modality == m for c in index.cases) for m in written["counts"]}
    assert by_modality == written["counts"]
    for case in index.cases[::7]:
        with np.load(root / case.rel) as npz:
            gts, spacing = npz["gts"], npz["spacing"]
        assert case.shape == list(gts.shape) and np.allclose(case.spacing, spacing[::-1])
        ids, counts, boxes = label_stats(gts)
        assert case.label_ids == ids and case.label_counts == counts and case.label_boxes == boxes
        for i, box in zip(ids, boxes):
            where = np.argwhere(gts == i)
            assert box == list(where.min(0)) + list(where.max(0) + 1)
    cells = [c for c in index.cases if c.modality == "Microscopy"]
    assert all(c.gts_dtype == "uint16" and c.no_box for c in cells)
    assert max(max(c.label_ids) for c in cells) > 255 and min(len(c.label_ids) for c in cells) >= 50
    abd = [c for c in index.cases if c.dataset == "AbdFake"]
    assert all(set(c.label_ids) <= {1, 2, 5, 9} for c in abd) and any(9 in c.label_ids for c in abd)
    assert all(c.no_box and c.instance for c in index.cases if c.modality == "PET")  # text_prompts instance_label=1
    assert not any(c.no_box for c in index.cases if c.modality in ("CT", "MR", "US"))
    assert {c.img_dtype for c in index.cases} == {"uint8", "int16", "float32"}


def test_index_rereads_only_changed_files(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    write_fake_dataset(root, seed=3, per_dataset=3)
    first = build_index(root, cache, workers=1, progress=False)
    assert first.scanned == len(first.cases) + len(first.bad)
    again = build_index(root, cache, workers=1, progress=False)
    assert again.scanned == 0 and [c.rel for c in again.cases] == [c.rel for c in first.cases]
    touched = root / first.cases[0].rel
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # same bytes, new mtime
    (root / first.cases[1].rel).unlink()
    shutil.copy(root / first.cases[2].rel, root / "CT" / "AbdFake" / "CT_AbdFake_new.npz")
    fixed = root / "US" / "HeartFake" / "US_HeartFake_empty.npz"  # a bad file repaired
    shutil.copy(root / next(c.rel for c in first.cases if c.modality == "US"), fixed)
    third = build_index(root, cache, workers=1, progress=False)
    assert third.scanned == 3
    rels = {c.rel for c in third.cases}
    assert first.cases[1].rel not in rels and "CT/AbdFake/CT_AbdFake_new.npz" in rels
    assert "US/HeartFake/US_HeartFake_empty.npz" in rels and len(third.bad) == len(first.bad) - 1


def test_sampling_is_uniform_over_modalities_then_datasets(data):
    rng = np.random.default_rng(0)
    draws = 20000
    mods, dsets = [], []
    for _ in range(draws):
        n, label = data.draw(rng)
        case = data.cases[n][1]
        assert label in case.label_ids
        mods.append(case.modality)
        dsets.append(case.dataset)
    mods, dsets = np.array(mods), np.array(dsets)
    # files are 40 CT / 25 MR / 15 PET / 12 US / 10 Microscopy, yet each modality is drawn 1/5
    counts = np.array([(mods == m).sum() for m in ("CT", "MR", "PET", "US", "Microscopy")])
    chi2 = ((counts - draws / 5) ** 2 / (draws / 5)).sum()
    assert chi2 < 18.5, counts  # chi-square, 4 dof: p ~ 0.001
    ct = dsets[mods == "CT"]
    assert abs((ct == "AbdFake").mean() - 0.5) < 5 * np.sqrt(0.25 / len(ct))  # 25 vs 15 files, each 1/2


def test_weights_change_the_balance(fake):
    root, cache, _ = fake
    data = LabelledData([root], cache_dir=cache, verbose=False, weights="CT=3,Microscopy=0,LungFake=0")
    rng = np.random.default_rng(1)
    cases = [data.cases[data.draw(rng)[0]][1] for _ in range(4000)]
    mods = np.array([c.modality for c in cases])
    assert "Microscopy" not in mods and not any(c.dataset == "LungFake" for c in cases)
    assert abs((mods == "CT").mean() - 0.5) < 0.04  # 3 / (3 + 1 + 1 + 1)


def test_crop_holds_the_whole_object_as_label_1_with_context(data):
    for k in range(60):
        sample = data.sample(5, 0, k)
        assert isinstance(sample, SynthCase) and sample.image.dtype == np.uint8 and sample.labels.dtype == np.uint8
        n = next(i for i, (_, c) in enumerate(data.cases) if c.name == sample.source)
        info = data.cases[n][1]
        pos = info.label_ids.index(sample.label_id)
        assert (sample.labels == 1).sum() == info.label_counts[pos]  # the whole object
        box = np.array(info.label_boxes[pos])
        lo = box[:3] - np.array(sample.origin)
        hi = lo + box[3:] - box[:3]
        room = np.minimum(lo, np.array(sample.labels.shape) - hi)
        to_border = np.minimum(box[:3], np.array(info.shape) - box[3:])
        assert np.all(room >= np.minimum(24, to_border))  # context on every side (clipped at the image)
        present = np.unique(sample.labels)
        assert np.array_equal(present, np.arange(len(present)))  # 0..K contiguous
        assert sample.look == info.modality.lower() and sample.no_box == info.no_box
        assert np.allclose(sample.spacing, info.spacing)


def test_cached_crop_equals_the_crop_from_the_npz(fake, data):
    root, cache, _ = fake
    plain = LabelledData([root], cache_dir=cache, cache=False, verbose=False)
    for k in range(40):
        a, b = data.sample(9, 1, k), plain.sample(9, 1, k)
        assert (a.source, a.label_id, a.origin) == (b.source, b.label_id, b.origin)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
        with np.load(root / data.cases[[c.name for _, c in data.cases].index(a.source)][1].rel) as npz:
            image, gts = to_uint8(npz["imgs"])[0], npz["gts"]
        info = next(c for _, c in data.cases if c.name == a.source)
        window = crop_window(info.label_boxes[info.label_ids.index(a.label_id)], info.shape)
        assert np.array_equal(a.image, image[window])
        assert np.array_equal(a.labels == 1, gts[window] == a.label_id)
        assert np.array_equal(a.labels > 0, (gts[window] > 0) | (a.labels == 1))


def test_max_voxels_thins_large_crops_and_scales_spacing(fake):
    root, cache, _ = fake
    data = LabelledData([root], cache_dir=cache, verbose=False, max_voxels=4000, weights="Microscopy=0,PET=0")
    thinned = 0
    for k in range(20):
        sample = data.sample(2, 0, k)
        assert sample.image.size <= 4000 or max(sample.stride) == 1
        thinned += max(sample.stride) > 1
        assert (sample.labels == 1).any()
        info = next(c for _, c in data.cases if c.name == sample.source)
        assert np.allclose(sample.spacing, np.array(info.spacing) * sample.stride)
    assert thinned >= 10


def test_rank_streams_differ_are_reproducible_and_resume(data):
    a = [data.sample(0, 0, k) for k in range(12)]
    again = [data.sample(0, 0, k) for k in range(12)]
    other = [data.sample(0, 1, k) for k in range(12)]
    key = lambda s: (s.source, s.label_id)
    assert [key(s) for s in a] == [key(s) for s in again]
    assert sum(key(x) == key(y) for x, y in zip(a, other)) <= 3
    stream = data.stream(seed=0, rank=0)
    first = [next(stream) for _ in range(5)]
    state = stream.state_dict()
    assert state == {"seed": 0, "next": 5} and [key(s) for s in first] == [key(s) for s in a[:5]]
    resumed = data.stream(seed=0, rank=0, start=resume_start([state], 0))
    assert [key(next(resumed)) for _ in range(7)] == [key(s) for s in a[5:]]
    assert resume_start([state], 3) == 5 and resume_start(None, 0) == 0


def test_worker_stream_equals_in_process_stream(data):
    with data.stream(seed=4, rank=2, start=10, workers=2, prefetch=2) as stream:
        got = [next(stream) for _ in range(8)]
        assert stream.state_dict()["next"] == 18
    want = [data.sample(4, 2, k) for k in range(10, 18)]
    for g, w in zip(got, want):
        assert (g.source, g.label_id) == (w.source, w.label_id)
        assert np.array_equal(g.image, w.image) and np.array_equal(g.labels, w.labels)


def test_split_file_selects_cases(fake, tmp_path):
    root, cache, _ = fake
    split = tmp_path / "split.txt"
    split.write_text("# held out\nval CT_LungFake_*\nval MR/ProstateFake/*\n")
    assert read_split(split) == [("val", "CT_LungFake_*"), ("val", "MR/ProstateFake/*")]
    val = LabelledData([root], cache_dir=cache, split="val", split_file=split, verbose=False)
    train = LabelledData([root], cache_dir=cache, split="train", split_file=split, verbose=False)
    assert {c.dataset for _, c in val.cases} == {"LungFake", "ProstateFake"}
    assert len(val.cases) + len(train.cases) == 102
    assert not {c.name for _, c in val.cases} & {c.name for _, c in train.cases}


def test_bundled_cases_are_one_more_folder_split_by_file(tmp_path):
    train = LabelledData(bundled_folders(), split="train", split_file=BUNDLED_SPLIT, cache_dir=tmp_path,
                         verbose=False)
    assert sorted(c.name for _, c in train.cases) == ["MR_PyRadiomics_brain1", "MR_PyRadiomics_breast1"]
    val = LabelledData(bundled_folders(), split="val", split_file=BUNDLED_SPLIT, cache_dir=tmp_path, verbose=False)
    assert "MR_ICBM152_tissue" in {c.name for _, c in val.cases}
    sample = train.sample(0, 0, 0)
    assert sample.look == "mr" and not sample.no_box and (sample.labels == 1).any()
