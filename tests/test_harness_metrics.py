"""Scores against an independent brute-force implementation, the time rule and the AUC."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from harness import metrics


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a face neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner)


def brute_nsd(a: np.ndarray, b: np.ndarray, spacing, tol: float) -> float:
    sa, sb = brute_surface(a) * spacing, brute_surface(b) * spacing
    d = cdist(sa, sb)
    return ((d.min(axis=1) <= tol).sum() + (d.min(axis=0) <= tol).sum()) / (len(sa) + len(sb))


def blobs(rng, shape=(7, 9, 8)) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(rng.random(shape), 1.0) > 0.5


@pytest.mark.parametrize("seed", range(6))
def test_dsc_and_nsd_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    a, b = blobs(rng), blobs(rng)
    assert a.any() and b.any()
    spacing = np.array([2.5, 0.7, 1.1])
    expected_dsc = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert metrics.dsc(a, b) == pytest.approx(expected_dsc, abs=1e-6)
    for tol in (1.0, 2.0):
        assert metrics.nsd(a, b, spacing, tol) == pytest.approx(brute_nsd(a, b, spacing, tol), abs=1e-6)


def test_score_uses_the_stored_spacing_order_and_reports_the_corrected_one():
    rng = np.random.default_rng(7)
    gts, segs = blobs(rng).astype(np.uint8), blobs(rng).astype(np.uint8)
    segs[gts > 0] = 1  # DSC above 0.2, so NSD is computed
    spacing_xyz = np.array([0.5, 0.5, 5.0])
    out = metrics.score(segs, gts, spacing_xyz)
    assert out["nsd"] == pytest.approx(brute_nsd(segs > 0, gts > 0, spacing_xyz, 2.0), abs=1e-6)
    assert out["nsd_corrected"] == pytest.approx(brute_nsd(segs > 0, gts > 0, spacing_xyz[::-1], 2.0), abs=1e-6)
    assert out["nsd"] != out["nsd_corrected"]


def test_nsd_is_zero_when_mean_dsc_is_at_most_0_2():
    gts = np.zeros((6, 6, 6), np.uint8)
    gts[1:5, 1:5, 1:5] = 1
    segs = np.zeros_like(gts)
    segs[1:5, 1:5, 1] = 1  # DSC = 2*16/(64+16) = 0.4 ...
    assert metrics.score(segs, gts, [1, 1, 1])["nsd"] > 0
    segs[:] = 0
    segs[1, 1, 1:5] = 1  # ... and 2*4/(64+4) < 0.2, although every voxel lies on the surface
    out = metrics.score(segs, gts, [1, 1, 1])
    assert out["dsc"] < 0.2 and out["nsd"] == 0 and out["nsd_corrected"] == 0


def test_mean_is_over_ground_truth_classes_only():
    gts = np.zeros((4, 4, 4), np.uint8)
    gts[0, 0, :2] = 1
    gts[3, 3, :2] = 2
    segs = np.where(gts == 1, 1, 0).astype(np.uint8)
    segs[2, 2, 2] = 3  # a label absent from gts does not count
    out = metrics.score(segs, gts, [1, 1, 1])
    assert out["dsc_per_class"] == [1.0, 0.0] and out["dsc"] == 0.5


def test_auc_is_the_unit_step_trapezoid():
    assert metrics.auc([1, 1, 1, 1, 1]) == 4.0
    assert metrics.auc([0.1, 0.2, 0.4, 0.8, 1.0]) == pytest.approx((0.1 + 1.0) / 2 + 0.2 + 0.4 + 0.8)


def test_time_rule_zeroes_the_case_but_keeps_the_raw_scores():
    its = [{"iteration": i, "seconds": 15.0, "dsc": 0.5, "nsd": 0.6, "nsd_corrected": 0.7} for i in range(6)]
    within = metrics.summarise(its, num_classes=1)  # 90 s for K = 1: exactly at the limit is allowed
    assert not within["over_budget"] and within["dsc_final_timed"] == 0.5
    its[0]["seconds"] = 15.1
    over = metrics.summarise(its, num_classes=1)
    assert over["over_budget"] and over["dsc_auc"] == 2.0 and over["dsc_auc_timed"] == 0.0
    assert over["nsd_final"] == 0.6 and over["nsd_final_timed"] == 0.0 and over["dsc_iter0_timed"] == 0.0
    assert not metrics.summarise(its, num_classes=2)["over_budget"]
