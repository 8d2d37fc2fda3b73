"""harness.bench's inputs: the click-5 replay, the stand-in truth and the synthetic cases (no engine run)."""

from pathlib import Path

import numpy as np

from app.io import load_case
from harness import bench
from harness.official import boxes_from_labels


def two_spheres(tmp_path: Path) -> tuple[Path, np.ndarray]:
    shape = (12, 20, 20)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    gts = np.zeros(shape, np.uint8)
    gts[sum((g - c) ** 2 for g, c in zip(grid, (6, 6, 6))) <= 16] = 1
    gts[sum((g - c) ** 2 for g, c in zip(grid, (6, 14, 14))) <= 9] = 2
    path = tmp_path / "MR_spheres.npz"
    np.savez_compressed(path, imgs=(60 + 120 * (gts > 0)).astype(np.uint8), spacing=np.array([1.0, 1.0, 2.0]),
                        boxes=boxes_from_labels(gts))
    return path, gts


def marking_engine(case, state, deadline):
    """Keeps prev_pred, with the iteration it ran at written into voxel (0, 0, 0)."""
    out = case.prev_pred.copy()
    out[0, 0, 0] = case.iteration
    return out


def test_click_input_replays_iterations_one_to_four(tmp_path):
    path, gts = two_spheres(tmp_path)
    box_segs = np.zeros_like(gts)
    click = bench.click_input(path, box_segs, gts, marking_engine, tmp_path / "replay")
    case = load_case(click)
    assert case.iteration == 5 and case.has_boxes and case.num_classes == 2
    with np.load(click, allow_pickle=True) as data:
        assert data["prev_pred"][0, 0, 0] == 4  # the engine's output of iteration 4
        assert data["clicks_order"].shape == (2, 5)
        assert all(set(c) == {"fg", "bg"} for c in data["clicks"])
        assert sum(len(c["fg"]) + len(c["bg"]) for c in data["clicks"]) == 10
        np.testing.assert_array_equal(data["boxes"][0]["z_min"], boxes_from_labels(gts)[0]["z_min"])


def test_stand_in_truth_erodes_each_class_in_plane():
    segs = np.zeros((5, 20, 20), np.uint8)
    segs[:, 2:10, 2:10] = 1
    segs[:, 12:20, 12:20] = 2  # at the image border: eroded there too
    truth = bench.stand_in_truth(segs, 2)
    assert (truth == 1).sum() == 5 * 4 * 4 and (truth == 2).sum() == 5 * 4 * 4
    assert truth[:, 4:8, 4:8].min() == 1 and truth[:, 14:18, 14:18].min() == 2


def test_synthetic_cases(tmp_path):
    chest = bench.chest_ct_case(tmp_path)
    with np.load(chest.path, allow_pickle=True) as data, np.load(chest.gts) as truth:
        assert data["imgs"].shape == (34, 128, 128) and data["imgs"].dtype == np.uint8
        # one box per label 1..K (7 with training.synth v4; the count follows the synth version)
        k = len(data["boxes"])
        assert k >= 2 and np.array_equal(np.unique(truth["gts"]), np.arange(k + 1))
        assert data["spacing"].tolist() == [1.5, 1.5, 10.0]
    voxel = load_case(bench.one_voxel_case(tmp_path).path)
    assert voxel.image.shape == (1, 1, 1) and voxel.num_classes == 1 and voxel.has_boxes


def test_click_row_shows_the_ratio_to_its_box_row():
    row = {"case": "x", "K": 2, "shape": "1x1x1", "total_s": 2.0, "per_class_s": 0.3, "peak_rss_gb": 0.5,
           "budget_share": 0.1, "fell_back": False}
    assert bench.format_row({**row, "per_class_s": 0.6}, 1.0, row).rstrip(" |").endswith("2.00")
    assert len(bench.format_row(row, 1.0)) == len(bench.HEADER)


def test_peak_rss_is_the_app_s_own_not_the_bench_process_s(tmp_path, monkeypatch):
    """The bench holds torch and the engine; a child forked from it would report that as its peak."""
    monkeypatch.setenv("SEGFM_ENGINE", "app.fallback:run")  # no torch in the child
    ballast = np.ones(2**29 // 8)  # 512 MB held (and touched) by this process
    wall, peak_gb, err, segs = bench.run_once(bench.one_voxel_case(tmp_path).path)
    assert ballast.sum() > 0 and segs.shape == (1, 1, 1) and wall > 0
    assert peak_gb < 0.4, err
