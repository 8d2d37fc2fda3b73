"""The box prior (app.prior): the classical estimate the engine hands its network at round 0."""

from dataclasses import replace

import numpy as np

from app import prior
from app.engine import ClassSegmenter
from app.io import Box
from app.views import ClassView


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _scene(shape=(40, 64, 64), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(60, 12, shape)
    truth = np.zeros(shape, bool)
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    truth[((zz - 20) / 12) ** 2 + ((yy - 30) / 18) ** 2 + ((xx - 34) / 16) ** 2 <= 1] = True
    image[truth] += 90
    return np.clip(image, 0, 255).astype(np.uint8), truth


def _box(truth, margin=3):
    lo, hi = np.argwhere(truth).min(0), np.argwhere(truth).max(0)
    zs = np.where(truth)[0]
    lo[1:] -= margin
    hi[1:] += margin
    return Box.from_bounds(lo, hi, int(zs[zs.size // 2]))


def test_prior_finds_a_bright_object_in_a_loose_box():
    image, truth = _scene()
    mask = prior.box_prior(image, _box(truth), (2.0, 1.0, 1.0))
    assert mask.shape == image.shape
    assert _dice(mask, truth) > 0.9
    box_fill = np.zeros_like(truth)
    box_fill[_box(truth).slices()] = True
    assert _dice(mask, truth) > _dice(box_fill, truth) + 0.2


def test_subsampled_prior_of_a_large_box_agrees_with_full_resolution(monkeypatch):
    image, truth = _scene((24, 96, 96), seed=1)
    box = _box(truth)
    full = prior.box_prior(image, box, (2.0, 1.0, 1.0))
    monkeypatch.setattr(prior, "MAX_VOXELS", 5e3)  # forces in-plane subsampling
    coarse = prior.box_prior(image, box, (2.0, 1.0, 1.0))
    assert coarse.shape == image.shape
    assert _dice(coarse, full) > 0.9


def test_open_ends_keep_the_prior_full_where_the_scan_cuts_the_object():
    """A bright cylinder cut by both ends of a 9-slice scan (a body on thick slices): the tapered
    ellipsoid shrinks towards the end slices, the open-ended prior does not; a box that stops
    before the scan's end tapers either way."""
    rng = np.random.default_rng(2)
    image = rng.normal(60, 12, (9, 64, 64))
    _, yy, xx = np.ogrid[:9, :64, :64]
    truth = np.broadcast_to(((yy - 32) / 24) ** 2 + ((xx - 32) / 22) ** 2 <= 1, image.shape).copy()
    image[truth] += 20  # faint: the shape decides, as for fat and muscle against the air around a body
    image = np.clip(image, 0, 255).astype(np.uint8)
    box = _box(truth)
    tapered = prior.box_prior(image, box, (10.0, 1.0, 1.0))
    opened = prior.box_prior(image, box, (10.0, 1.0, 1.0), open_ends=True)
    assert _dice(opened, truth) > _dice(tapered, truth)
    assert opened[0].sum() > 0.9 * truth[0].sum() > tapered[0].sum()
    inner = Box.from_bounds(np.array([1, box.y_min, box.x_min]), np.array([7, box.y_max, box.x_max]), 4)
    assert np.array_equal(prior.box_prior(image, inner, (10.0, 1.0, 1.0), open_ends=True),
                          prior.box_prior(image, inner, (10.0, 1.0, 1.0)))
    segmenter = ClassSegmenter(image, np.array([10.0, 1.0, 1.0]), None, None)
    view = ClassView.single(box, [], [], [], None)
    assert np.array_equal(segmenter.prepare(view).prev_mask(), tapered)
    assert np.array_equal(segmenter.prepare(replace(view, holds_a_box=True)).prev_mask(), opened)  # a body
    # the same object in a scan twice as wide and high covers a quarter of the slice: a lung
    # holding a lesion, which tapers though the scan cuts it (engine.OPEN_AREA)
    wide = np.zeros((9, 128, 128), np.uint8)
    wide[:, :64, :64] = image
    small = ClassSegmenter(wide, np.array([10.0, 1.0, 1.0]), None, None)
    held = small.prepare(replace(view, holds_a_box=True)).prev_mask()
    assert np.array_equal(held, prior.box_prior(wide, box, (10.0, 1.0, 1.0)))
    assert held[0].sum() < prior.box_prior(wide, box, (10.0, 1.0, 1.0), open_ends=True)[0].sum()


def test_engine_hands_the_prior_over_only_to_boxed_classes_without_a_previous_mask():
    image, truth = _scene()
    segmenter = ClassSegmenter(image, np.array([2.0, 1.0, 1.0]), None, None)
    box = _box(truth)
    prepared = segmenter.prepare(ClassView.single(box, [], [], [], None))
    assert np.array_equal(prepared.prev_mask(), prior.box_prior(image, box, (2.0, 1.0, 1.0)))
    prev = np.zeros_like(truth)
    prev[18:22, 28:32, 30:36] = True
    kept = segmenter.prepare(ClassView.single(box, [(20, 30, 33)], [], ["fg"], prev))
    assert np.array_equal(kept.prev_mask(), prev)
    assert not segmenter.prepare(ClassView.single(None, [], [], [], None)).has_prev


def test_click_llr_lowers_only_where_an_other_click_is_typical():
    """Own click on the bright tissue, an other click on the dark one: the dark tissue gets a
    negative ratio, the bright one none, an intensity no click sampled none; an other click of
    about the own click's intensity tells nothing (None)."""
    rng = np.random.default_rng(0)
    image = np.full((6, 12, 30), 150.0)
    image[:, :, 10:20] = 50.0
    image[:, :, 20:] = 250.0
    image = np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)
    everything = (slice(None),) * 3
    llr = prior.click_llr(image, everything, [(3, 6, 5)], [(3, 6, 15)])
    assert (llr[:, :, 11:19] < -3).all()
    assert (llr[:, :, :9] == 0).all() and (llr[:, :, 21:] == 0).all()
    part = prior.click_llr(image, (slice(None), slice(None), slice(8, 30)), [(3, 6, 5)], [(3, 6, 15)])
    assert (part == llr[:, :, 8:]).all()  # clicks in image coordinates, the ratio on the region
    assert prior.click_llr(image, everything, [(3, 6, 5)], []) is None
    assert prior.click_llr(image, everything, [], [(3, 6, 15)]) is None
    # a negative click like another class's positive click marks a neighbour of the same tissue
    assert prior.click_llr(image, everything, [(3, 6, 5)], [(3, 6, 15)], labelled=[(1, 1, 12)]) is None
    # ... unless a twin's positive click says that tissue is foreign to this class
    twin = prior.click_llr(image, everything, [(3, 6, 5)], [(3, 6, 15)], labelled=[(1, 1, 12)], foreign=[(2, 2, 16)])
    assert (twin == llr).all()
    with_own_sample = prior.click_llr(image, everything, [], [(3, 6, 15)], own_sample=image[:, :, :10].ravel())
    assert (with_own_sample == llr).all()
    image[:, :, 10:20] = 152
    assert prior.click_llr(image, everything, [(3, 6, 5)], [(3, 6, 15)]) is None


def test_a_twin_gains_nothing_at_the_level_of_an_other_click_too_like_its_own():
    """A noisy dark sheet (CSF, partial volumes) beside grey tissue: its click's cube is so
    spread that the grey twin's click is dropped as about its level, and the grey level lies
    within two spreads of it. The grey tissue must not count as the twin's own evidence then
    (click_refit's gain took the ICBM grey matter for CSF after one CSF click: DSC_AUC
    2.907 at widening seed 7, 3.125 without)."""
    rng = np.random.default_rng(2)
    image = np.full((7, 12, 30), 140.0) + rng.normal(0, 3, (7, 12, 30))
    image[:, :, 12:17] = 120.0 + rng.normal(0, 18, (7, 12, 5))  # the dark sheet
    image[:, :, 24:] = 240.0
    image = np.clip(image, 0, 255).astype(np.uint8)
    everything = (slice(None),) * 3
    own, others = [(3, 6, 14)], [(3, 6, 5), (3, 6, 27)]  # CSF's click; its twins' grey and bright clicks
    llr = prior.click_llr(image, everything, own, others, own_evidence=True, foreign=others)
    assert (llr[:, :, 1:10] <= 0).all()  # the grey tissue: no gain
    assert (llr[:, :, 25:29] < -3).all()  # the bright one, told apart, is lowered
    assert (llr[:, :, 12:17] > 0).mean() > 0.2  # the sheet's levels unlike grey still gain


def test_a_mask_mostly_of_an_other_clicks_tissue_stands_for_its_own_by_its_nearest_part():
    """A twin's previous mask holds 70 % of the tissue of a negative click (dark) and 30 % of its
    own (mid grey), beside a bright tissue of another negative click. Its whole median is dark,
    so the negative click is dropped as its own level and nothing is lowered; its nearest part
    is mid grey, so the dark tissue is lowered and the mid grey kept."""
    rng = np.random.default_rng(1)
    image = np.full((6, 12, 30), 120.0)
    image[:, :, :10] = 60.0
    image[:, :, 20:] = 200.0
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    everything = (slice(None),) * 3
    mask = np.zeros(image.shape, bool)
    mask[:, :, :7] = mask[:, :, 10:13] = True
    sample, clicks = image[mask], [(3, 6, 4), (3, 6, 25)]
    whole = prior.click_llr(image, everything, [], clicks, own_sample=sample)
    assert whole is None or not (whole[:, :, :9] < -3).all()
    llr = prior.click_llr(image, everything, [], clicks, own_sample=sample, sample_unlike_others=True)
    assert (llr[:, :, 1:9] < -3).mean() > 0.95 and (llr[:, :, 11:19] == 0).all()  # noise past 2 spreads: 0
    level = np.median(prior.nearest_own_part(sample, np.array([60.0, 200.0])))
    assert abs(level - 120) < 5
    assert prior.nearest_own_part(sample[:40], np.array([60.0, 200.0])) is None  # too few left


def test_edge_model_finds_what_meets_the_box_sides_and_skips_sides_at_the_image_border():
    """A bright ring touching its box on every side, a dark inside, grey around: the ring's
    level is the object's, the surroundings' is not; the box centre's level is no evidence for
    the object. A box at the image border on every side leaves no ring to compare with."""
    image = np.full((5, 40, 40), 120, np.uint8)
    yy, xx = np.mgrid[:40, :40]
    radius = np.hypot(yy - 20, xx - 20)
    image[:, (radius <= 12) & (radius > 9)] = 230
    image[:, radius <= 9] = 20
    box = Box(0, 4, 2, 8, 32, 8, 32)
    weight, llr = prior.edge_llr(image, box)
    levels = prior.grey_levels(np.array([230, 120, 20], np.uint8))
    assert weight > 0.1 and llr[levels[0]] > 1.0 and llr[levels[1]] < 0.0 and llr[levels[2]] < 0.5
    assert prior.edge_llr(image, Box(0, 4, 2, 0, 39, 0, 39))[0] == 0.0


def test_edge_model_past_the_widening_band_sees_the_object_however_wide_the_box():
    """A 256-wide scan allows a widening of 5 voxels per side. With the box widened the most,
    the strips at the box edge hold mostly the surroundings, so their model hardly tells the
    object (230) from them (120); the strips past the band hold the object alone."""
    image = np.full((3, 256, 256), 120, np.uint8)
    image[:, 60:200, 50:210] = 230
    widest = Box(0, 2, 1, 55, 204, 45, 214)
    w_edge, at_edge = prior.edge_llr(image, widest)
    w_past, past = prior.edge_llr(image, widest, past_widening=True)
    obj, around = prior.grey_levels(np.array([230, 120], np.uint8))
    assert w_past > w_edge + 0.3 and past[obj] - past[around] > at_edge[obj] - at_edge[around] + 3.0
    tight = Box(0, 2, 1, 60, 199, 50, 209)  # not widened: past the band the strips are still the object's
    weight, tight_past = prior.edge_llr(image, tight, past_widening=True)
    assert weight > 0.9 and tight_past[obj] > 1.0 > tight_past[around]


def test_organ_model_tells_the_parcelled_organ_from_what_lies_around_all_its_parcels():
    """An organ (150) split into four touching quadrant parcels, inside a skull-like shell (40)
    in air (0): the parcels' cores hold the organ, the shell around their boxes' union the
    skull and air, so the organ's level comes out positive and the skull's negative, though
    each quadrant's box corners hold skull too."""
    image = np.zeros((6, 80, 80), np.uint8)
    yy, xx = np.mgrid[:80, :80]
    radius = np.hypot(yy - 40, xx - 40)
    image[:, radius <= 30] = 40
    image[:, radius <= 24] = 150
    quadrants = [Box(0, 5, 3, y0, y0 + 24, x0, x0 + 24) for y0 in (16, 40) for x0 in (16, 40)]
    weight, llr = prior.organ_llr(image, quadrants, (2.0, 1.0, 1.0))
    organ, skull, air = prior.grey_levels(np.array([150, 40, 0], np.uint8))
    assert weight > 0.5 and llr[organ] > 1.0 and llr[skull] < -1.0 and llr[air] < -1.0
