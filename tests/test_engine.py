"""Engine modules: prompt channels, RoI maps, fusion, routing, scheduling, the time-aware loop."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from app import engine, prior
from app.autobox import grown_bounds, touches_open_side
from app.canvas import ClassCanvas
from app.confine import claimed_balls, confine_to_click, confine_to_sliver, error_radius_mm, keep_click_direction
from app.experts import Expert
from app.fuse import (
    BOX_FILL_P,
    MIN_CONTENTS,
    blend_prior,
    click_refit,
    fuse_edges,
    fuse_intensity,
    parcel_penalty,
    spans_its_box,
    unlike_its_box_edges,
)
from app.io import Box, Case, ClassPrompts
from app.models.unet3d import build_unet, config_dict
from app.postprocess import CONFIDENT_FLOOR, StreamingFusion
from app.prompts import CHANNELS, Others, box_channel, click_channel, encode, in_plane_fraction
from app.roi import Roi, crop, crop_image, from_patch, prompt_bounds, roi_around, to_patch, window_at, zoom_factors
from app.state import RunState
from app.views import LINING_IOU, TWIN_IOU, ClassView, box_iou, class_views, schedule


# ----------------------------------------------------------------------------- prompts
def test_box_channel_matches_hand_computed_cuboid():
    roi = Roi((0, 0, 0), (4, 5, 6), (4, 5, 6))
    expected = np.zeros((4, 5, 6), np.float32)
    expected[1:3, 2:5, 0:2] = 1
    assert np.array_equal(box_channel(roi, (1, 2, 0), (2, 4, 1)).numpy(), expected)


def test_box_channel_on_a_zoomed_grid_samples_voxel_centres():
    roi = Roi((0, 0, 0), (8, 8, 8), (4, 4, 4))  # patch voxel i covers image voxels 2i, 2i+1
    channel = box_channel(roi, (0, 0, 0), (3, 3, 3)).numpy()
    expected = np.zeros((4, 4, 4), np.float32)
    expected[:2, :2, :2] = 1
    assert np.array_equal(channel, expected)


def test_click_ball_radius_is_in_millimetres_at_native_resolution():
    roi = Roi((0, 0, 0), (9, 9, 9), (9, 9, 9))
    ball = click_channel(roi, [(4, 4, 4)], spacing=(1.0, 1.0, 1.0), radius_mm=1.0, radius_patch=0.5).numpy()
    expected = np.zeros((9, 9, 9), np.float32)
    expected[4, 4, 4] = 1
    for axis in range(3):
        for d in (-1, 1):
            idx = [4, 4, 4]
            idx[axis] += d
            expected[tuple(idx)] = 1
    assert np.array_equal(ball, expected)
    thick = click_channel(roi, [(4, 4, 4)], spacing=(5.0, 1.0, 1.0), radius_mm=2.0, radius_patch=0.5).numpy()
    assert thick[:, 4, 4].sum() == 1 and thick[4, :, 4].sum() == 5  # 5 mm slices: one slice only


def test_zoomed_click_keeps_a_ball_of_patch_voxels():
    roi = Roi((0, 0, 0), (64, 64, 64), (8, 8, 8))
    ball = click_channel(roi, [(17, 40, 63)], spacing=(1.0, 1.0, 1.0), radius_mm=0.5).numpy()
    assert ball[2, 5, 7] == 1  # the click's own patch voxel
    centres = np.argwhere(ball)
    assert len(centres) >= 7 and np.all(np.abs(centres - (2, 5, 7)) <= 2)  # about 2 patch voxels around it
    native = click_channel(Roi((0, 0, 0), (8, 8, 8), (8, 8, 8)), [(4, 4, 4)], (1.0, 1.0, 1.0), radius_mm=0.5)
    assert int(native.sum()) == 33  # lattice points within 2 voxels: 1 + 6 + 12 + 8 + 6


def test_encode_channels_and_absent_prompts_are_zero():
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (10, 12, 14)).astype(np.uint8))
    roi = Roi((0, 0, 0), (8, 8, 8), (8, 8, 8))
    x = encode(image, roi, (1, 1, 1))
    assert x.shape == (len(CHANNELS), 8, 8, 8) == (9, 8, 8, 8)
    assert torch.all(x[1:] == 0)
    assert abs(float(x[0].mean())) < 1e-4  # z-scored image
    prev = torch.zeros(10, 12, 14, dtype=torch.bool)
    prev[2:4, 2:4, 2:4] = True
    x = encode(image, roi, (1, 1, 1), box=((1, 1, 1), (2, 2, 2)), fg=[(5, 5, 5)], bg=[(6, 6, 6)], prev=prev)
    assert x[1].sum() == 8 and x[2, 5, 5, 5] == 1 and x[3, 6, 6, 6] == 1 and x[4].sum() == 8
    assert torch.all(x[5:] == 0)  # no other class


def test_the_other_classes_channels_count_their_boxes_and_hold_their_voxels():
    """Two other boxes overlapping in one voxel row; the previous segmentation holds the class's
    own label (not another's), label 2 and label 3."""
    image = torch.zeros(10, 12, 14, dtype=torch.uint8)
    roi = Roi((0, 0, 0), (8, 8, 8), (8, 8, 8))
    labels = np.zeros((10, 12, 14), np.uint8)
    labels[0:2, 0:2, 0:2] = 1
    labels[4:6, 4:6, 4:6] = 2
    labels[7, 7, 7] = 3
    labels[9, 9, 9] = 2  # outside the RoI
    boxes = (((0, 0, 0), (3, 3, 3)), ((3, 0, 0), (5, 3, 3)))
    x = encode(image, roi, (1, 1, 1), others=Others(boxes, labels, 1))
    assert set(np.unique(x[5].numpy())) == {0.0, 0.5, 0.75}
    assert x[5, 3, 0, 0] == 0.75 and x[5, 0, 0, 0] == 0.5 and x[5, 5, 0, 0] == 0.5 and x[5, 6, 0, 0] == 0
    assert x[6].sum() == 9 and x[6, 0, 0, 0] == 0 and x[6, 4, 4, 4] == 1 and x[6, 7, 7, 7] == 1
    zoomed = Roi((0, 0, 0), (10, 12, 14), (4, 4, 4))
    assert encode(image, zoomed, (1, 1, 1), others=Others(boxes, labels, 1)).shape == (9, 4, 4, 4)
    assert torch.all(x[7:] == 0)  # no container, no content


def test_containers_and_contents_get_channels_of_their_own():
    """A white matter's box around a parcel's and a nucleus's box inside it: each in its own
    channel, not among the neighbours' boxes."""
    image = torch.zeros(10, 12, 14, dtype=torch.uint8)
    roi = Roi((0, 0, 0), (8, 8, 8), (8, 8, 8))
    others = Others(containers=(((0, 0, 0), (7, 7, 7)),), contents=(((2, 2, 2), (3, 3, 3)),))
    x = encode(image, roi, (1, 1, 1), box=((1, 1, 1), (5, 5, 5)), others=others)
    assert torch.all(x[5] == 0) and torch.all(x[7] == 0.5) and x[8].sum() == 8 * 0.5 and x[8, 2, 2, 2] == 0.5


def test_a_five_channel_file_computes_what_it_did(tmp_path):
    """A weights file from before the other classes' channels loads with zero weights for them:
    its logits are those of the five-channel network, whatever the other channels hold."""
    torch.manual_seed(0)
    old = build_unet({"in_channels": 5, "widths": (8, 16), "groups": 4}).eval()
    torch.save({"model": old.state_dict(), "model_config": config_dict(old), "meta": {"patch": 8}}, tmp_path / "g.pt")
    expert = Expert.load(tmp_path / "g.pt", torch.device("cpu"))
    assert expert.model.config.in_channels == len(CHANNELS)
    x = torch.randn(1, len(CHANNELS), 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(expert.model(x), old(x[:, :5]))
        x[:, 5:] = torch.rand(1, len(CHANNELS) - 5, 8, 8, 8)
        assert torch.equal(expert.model(x), old(x[:, :5]))


def test_a_box_prior_keeps_the_other_classes_voxels():
    """A class absent from the previous segmentation gets its box prior as its previous mask; the
    other classes' voxels stay there for the others' channel (ClassSegmenter.others_for)."""
    prev_pred = np.zeros((10, 10, 10), np.uint8)
    prev_pred[0:3] = 2
    view = ClassView(1, ClassPrompts(None, [], [], []), None, None, prev_pred)
    mask = np.zeros((10, 10, 10), bool)
    mask[2:6] = True
    seen = view.with_prev(mask)
    assert np.array_equal(seen.prev_mask(), mask)
    assert np.all(seen.prev_pred[0:2] == 2) and np.all(seen.prev_pred[2:6] == 1) and not seen.prev_pred[6:].any()
    assert engine.ClassSegmenter.others_for(seen).labels is seen.prev_pred


def test_the_others_boxes_channel_shows_neighbours_not_containers_or_contents():
    """A white matter's box holds its two parcels' boxes: it sees neither among its neighbours,
    and they see only each other (ClassSegmenter.others_for), so a container is not told to give
    its box to its parts; the container's and the contents' boxes go to their own channels."""
    image = np.zeros((20, 40, 40), np.uint8)
    white = ClassPrompts(Box.from_bounds((0, 0, 0), (19, 39, 39)), [], [], [])
    left = ClassPrompts(Box.from_bounds((5, 5, 5), (14, 20, 18)), [], [], [])
    right = ClassPrompts(Box.from_bounds((5, 5, 15), (14, 20, 30)), [], [], [])
    views = class_views(Case("MR_x", image, np.ones(3), [white, left, right], None, 0, True))
    seen = [[tuple(map(tuple, b)) for b in engine.ClassSegmenter.others_for(v).boxes] for v in views]
    assert len(views[0].contents) == 2 and seen[0] == []
    assert seen[1] == [((5, 5, 15), (14, 20, 30))] and seen[2] == [((5, 5, 5), (14, 20, 18))]
    nested = [engine.ClassSegmenter.others_for(v) for v in views]
    assert len(nested[0].contents) == 2 and nested[0].containers == ()
    assert [tuple(map(tuple, b)) for b in nested[1].containers] == [((0, 0, 0), (19, 39, 39))] == \
        [tuple(map(tuple, b)) for b in nested[2].containers] and nested[1].contents == ()


def test_a_thin_slab_is_normalised_on_its_content_not_on_the_padding():
    """15 slices in a 48-slice patch: repeated edge slices beyond z, zeros (air) beyond the
    in-plane field of view, and the z-score over what the image holds."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(100, 200, (15, 40, 40)).astype(np.uint8))
    roi = Roi((-16, -4, 0), (48, 48, 40), (48, 48, 40))
    cropped = crop_image(image, roi)
    assert torch.equal(cropped[:16, 4:44], image[0].expand(16, 40, 40))
    assert torch.equal(cropped[16:31, 4:44], image) and torch.equal(cropped[31:, 4:44], image[-1].expand(17, 40, 40))
    assert torch.all(cropped[:, :4] == 0) and torch.all(cropped[:, 44:] == 0)
    x = encode(image, roi, (10, 1, 1))[0]
    assert abs(float(x[:, 4:44].mean())) < 1e-3 and abs(float(x[:, 4:44].std()) - 1) < 1e-2
    assert float(x[:, :4].max()) < -3  # the padding is darker than anything in the image


def test_in_plane_fraction_equals_the_dense_resampled_indicator():
    for roi, shape in [(Roi((-5, -7, 3), (64, 100, 90), (16, 24, 24)), (20, 80, 70)),
                       (Roi((-2, -3, -1), (16, 16, 16), (16, 16, 16)), (10, 10, 10))]:
        dense = torch.zeros(roi.size)
        dense[(slice(None), *roi.image_slices(shape)[1][1:])] = 1.0
        assert torch.allclose(in_plane_fraction(roi, shape), to_patch(dense[None], roi)[0], atol=1e-6)


# ----------------------------------------------------------------------------- roi
def test_native_roi_round_trip_is_voxel_exact():
    volume = torch.rand(20, 30, 25)
    roi = window_at((3, 15, 24), (8, 8, 8))  # partly outside the image
    patch = to_patch(crop(volume[None], roi), roi)
    back = from_patch(patch, roi)[0]
    img_sl, crop_sl = roi.image_slices(tuple(volume.shape))
    assert torch.equal(back[crop_sl], volume[img_sl])
    outside = torch.ones_like(back, dtype=torch.bool)
    outside[crop_sl] = False
    assert torch.all(back[outside] == 0)


def test_zoom_rule_and_zoomed_roi_covers_the_object():
    assert np.allclose(zoom_factors((10, 48, 100), (48, 48, 48)), (1.0, (48 + 16) / 48, (100 + 16) / 48))
    roi = roi_around((5, 10, 20), (14, 80, 60), (16, 16, 16))
    assert roi.size[0] == 16 and roi.size[1] > 16 and roi.zoomed
    for lo, hi, start, size in zip((5, 10, 20), (14, 80, 60), roi.start, roi.size):
        assert start <= lo and hi < start + size


def test_zoomed_round_trip_keeps_a_smooth_volume():
    zz, yy, xx = torch.meshgrid(*(torch.linspace(0, 1, 32),) * 3, indexing="ij")
    volume = zz + yy + xx
    roi = Roi((0, 0, 0), (32, 32, 32), (16, 16, 16))
    back = from_patch(to_patch(volume[None], roi), roi)[0]
    assert float((back - volume)[2:-2, 2:-2, 2:-2].abs().max()) < 1e-3


def test_prompt_bounds_unions_box_clicks_and_mask():
    prev = np.zeros((20, 20, 20), bool)
    prev[15, 16, 17] = True
    lo, hi = prompt_bounds(((2, 3, 4), (5, 6, 7)), [(1, 10, 10)], prev)
    assert tuple(lo) == (1, 3, 4) and tuple(hi) == (15, 16, 17)
    assert prompt_bounds(None, [], None) is None


# ----------------------------------------------------------------------------- fusion
def test_streaming_fusion_equals_the_dense_formula():
    rng = np.random.default_rng(1)
    k, shape = 5, (6, 7, 8)
    probs = rng.random((k,) + shape).astype(np.float32)
    probs[probs < 0.4] = 0
    regions = []
    fusion = StreamingFusion(shape)
    for c in range(k):
        lo = rng.integers(0, 3, 3)
        region = tuple(slice(int(a), int(a) + 4) for a in lo)
        dense = np.zeros(shape, np.float32)
        dense[region] = probs[c][region]
        probs[c] = dense
        regions.append(region)
        fusion.add(c + 1, torch.from_numpy(dense[region]), region)
    background = np.prod(1 - np.clip(probs, 0, 1 - 1e-6), axis=0)
    expected = np.argmax(np.concatenate([background[None], probs]), axis=0).astype(np.uint8)
    assert np.array_equal(fusion.labels(), expected)


def test_a_penalty_lowers_a_sure_class_bid_in_the_argmax_but_not_its_share_of_the_background():
    """The dense formula: bid = log-odds, less the penalty where p > 0.5 but not below
    CONFIDENT_FLOOR x the log-odds; the best bid's class wins where its p beats the product
    background. Classes on parts of the image, some probabilities 0, penalised classes between
    unpenalised ones (the bid volume starts at the first penalty)."""
    rng = np.random.default_rng(2)
    k, shape = 5, (6, 7, 8)
    probs = rng.random((k,) + shape).astype(np.float32)
    probs[probs < 0.2] = 0
    penalties = np.zeros((k,) + shape, np.float32)
    fusion = StreamingFusion(shape)
    for c in range(k):
        region = tuple(slice(int(a), int(a) + 5) for a in rng.integers(0, 2, 3))
        dense = np.zeros(shape, np.float32)
        dense[region] = probs[c][region]
        probs[c] = dense
        penalty = None
        if c in (1, 3):
            penalties[c][region] = rng.random((5, 5, 5)) * 3
            penalty = torch.from_numpy(penalties[c][region])
        fusion.add(c + 1, torch.from_numpy(dense[region]), region, penalty)
    odds = np.log(np.clip(probs, 1e-6, None) / (1 - probs))
    bids = np.where(odds > 0, np.maximum(odds - penalties, CONFIDENT_FLOOR * odds), odds)
    best = np.argmax(bids, axis=0)
    background = np.prod(1 - probs, axis=0)
    chosen = np.take_along_axis(probs, best[None], 0)[0]
    expected = np.where(chosen > background, best + 1, 0).astype(np.uint8)
    assert np.array_equal(fusion.labels(), expected)
    assert (expected != np.argmax(np.concatenate([background[None], probs]), axis=0)).any()  # the penalty mattered
    sure_only = np.take_along_axis(probs, (np.argmax(probs, axis=0))[None], 0)[0] > 0.5
    assert (chosen[sure_only] > 0.5).all()  # where some class is sure, a sure class wins


def test_overlapping_parcels_of_one_tissue_share_their_overlap_by_depth_in_their_boxes():
    """Two touching parcels whose masks both claim the whole overlap of their boxes at p 0.9 and
    0.91: the plain argmax gives it all to the surer one, the parcel penalty splits it at the
    middle. On CT (no shared tissue) and for a class that is no parcel (a box inside another's), no
    penalty."""
    image = np.zeros((12, 12, 24), np.uint8)
    left, right = Box.from_bounds((0, 0, 0), (11, 11, 13)), Box.from_bounds((0, 0, 10), (11, 11, 23))
    case = Case("MR_x", image, np.ones(3), [ClassPrompts(left, [], [], []), ClassPrompts(right, [], [], [])],
                None, 0, True)
    views = class_views(case)
    fusion, plain = StreamingFusion(image.shape), StreamingFusion(image.shape)
    for view, (lo, hi), p in zip(views, [(0, 14), (10, 24)], (0.9, 0.91)):
        canvas = ClassCanvas(image.shape)
        canvas.probs = torch.full((12, 12, hi - lo), p)
        canvas.lo, canvas.hi = np.array([0, 0, lo]), np.array([12, 12, hi])
        penalty = parcel_penalty(view, canvas, shared_tissue=True)
        assert penalty is not None and parcel_penalty(view, canvas, shared_tissue=False) is None
        fusion.add(view.label, canvas.probs, canvas.region(), penalty)
        plain.add(view.label, canvas.probs, canvas.region())
    centre = (6, 6)
    assert list(plain.labels()[centre][10:14]) == [2, 2, 2, 2]
    assert list(fusion.labels()[centre][10:14]) == [1, 1, 2, 2]
    small = ClassPrompts(Box.from_bounds((2, 2, 2), (5, 5, 5)), [], [], [])
    nested = Case("MR_x", image, np.ones(3), [ClassPrompts(left, [], [], []), small], None, 0, True)
    inner = class_views(nested)[1]
    assert not inner.parcel and parcel_penalty(inner, canvas, shared_tissue=True) is None


# ----------------------------------------------------------------------------- routing and scheduling
def _view(box=True, prev=False, fg=(), bg=(), order=()):
    prompts = ClassPrompts(Box(2, 5, 3, 2, 5, 2, 5) if box else None, list(fg), list(bg), list(order))
    b = (np.array([2, 2, 2]), np.array([5, 5, 5])) if box else None
    prev_pred = np.zeros((8, 8, 8), np.uint8)
    prev_pred[3, 3, 3] = 1
    region = (slice(3, 4),) * 3 if prev else None
    return ClassView(1, prompts, b, region, prev_pred if prev else None)


class BoxExpert(Expert):
    """Stands in for a network: +8 inside the box channel, -8 outside (the box fill)."""

    patch = zoomed_patch = (8, 8, 8)

    def __init__(self):
        self.calls = 0

    def logits(self, image, roi, spacing, box=None, fg=(), bg=(), prev=None, prev_on_crop=False, others=None):
        self.calls += 1
        x = encode(image, roi, spacing, box, fg, bg, prev, prev_on_crop)
        return from_patch((x[1:2] * 16 - 8), roi)[0]


class GrowingExpert(BoxExpert):
    """Predicts a fixed cube whatever the prompts: an object larger than any box."""

    def __init__(self, lo, hi):
        super().__init__()
        self.lo, self.hi = lo, hi

    def logits(self, image, roi, spacing, box=None, fg=(), bg=(), prev=None, prev_on_crop=False, others=None):
        self.calls += 1
        out = torch.full(roi.size, -8.0)
        coords = [np.arange(s, s + n) for s, n in zip(roi.start, roi.size)]
        inside = [(c >= a) & (c <= b) for c, a, b in zip(coords, self.lo, self.hi)]
        out[torch.from_numpy(inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :])] = 8.0
        return out


def _segment(expert, view, shape=(40, 40, 40), confine=False, guard=False, prior_weight=0.0, box_check=False):
    """The experts' routing alone: no autobox, prior blend, click guard, confinement or box check unless asked for."""
    image = np.zeros(shape, np.uint8)
    return engine.ClassSegmenter(image, np.ones(3), expert, None, autobox=False, click_guard=guard,
                                 confine=confine, prior_weight=prior_weight, box_check=box_check).segment(view)


def test_routing_rules():
    small = ClassPrompts(Box(2, 5, 3, 2, 5, 2, 5), [], [], [])
    view = ClassView(1, small, (np.array([2, 2, 2]), np.array([5, 5, 5])))
    assert _segment(BoxExpert(), view)[1] == ("global",)  # native RoI, no click
    assert _segment(BoxExpert(), view, prior_weight=0.4)[1] == ("global", "prior")  # round 0 of a box
    prev_pred = np.zeros((40, 40, 40), np.uint8)
    prev_pred[2:6, 2:6, 2:6] = 1
    clicked = replace(view, prompts=replace(small, fg=[(3, 3, 3)], order=["fg"]),
                      prev_region=(slice(2, 6),) * 3, prev_pred=prev_pred)
    assert _segment(BoxExpert(), clicked)[1] == ("global",)  # the click is inside a native RoI
    lost = replace(clicked, prev_region=None, prev_pred=None)  # clicked, but the fusion gave it no voxel
    assert lost.lost and _segment(BoxExpert(), lost, prior_weight=0.4)[1][:2] == ("local", "global")
    assert _segment(BoxExpert(), clicked, confine=True)[1] == ("global", "confined")  # a mask and a new click
    boxless = replace(clicked, prompts=replace(clicked.prompts, box=None))
    assert "confined" not in _segment(BoxExpert(), boxless, confine=True)[1]  # box-less: the clicks define it
    far = replace(clicked, prompts=replace(small, fg=[(30, 30, 30)], order=["fg"]))
    # the click lies outside the RoI: a local pass; BoxExpert's window still leaves it wrong, so the guard edits
    assert _segment(BoxExpert(), far)[1] == ("global", "local")
    assert _segment(BoxExpert(), far, guard=True)[1] == ("global", "local", "clickfix")
    nobox = ClassView(1, ClassPrompts(None, [(3, 3, 3)], [], ["fg"]), None)
    assert _segment(BoxExpert(), nobox)[1][:2] == ("local", "global")
    assert _segment(BoxExpert(), ClassView(1, ClassPrompts(None, [], [], []), None))[1] == ()


def test_only_objects_the_trained_patch_must_zoom_get_the_larger_patch():
    expert = Expert(torch.nn.Identity(), 48, "cpu", zoomed_patch=64)
    small = expert.roi_for(np.array([10, 10, 10]), np.array([30, 30, 30]))  # 21 voxels: native at 48
    assert small.patch == (48, 48, 48) and not small.zoomed
    large = expert.roi_for(np.array([0, 0, 0]), np.array([99, 99, 30]))  # 100 voxels in-plane
    assert large.patch == (64, 64, 64) and large.zoomed
    assert large.step[1] < roi_around(np.array([0, 0, 0]), np.array([99, 99, 30]), (48,) * 3).step[1]
    assert Expert(torch.nn.Identity(), 48, "cpu").zoomed_patch == (48, 48, 48)  # training: the trained patch


def test_regrowth_replaces_the_canvas_and_a_zoomed_regrown_roi_gets_the_local_pass():
    prompts = ClassPrompts(Box(10, 13, 11, 10, 13, 10, 13), [(12, 12, 12)], [], ["fg"])
    prev_pred = np.zeros((40, 40, 40), np.uint8)
    prev_pred[10:14, 10:14, 10:14] = 1  # last round's mask: the box
    view = ClassView(1, prompts, (np.array([10, 10, 10]), np.array([13, 13, 13])), (slice(10, 14),) * 3,
                            prev_pred)
    expert = GrowingExpert((6, 6, 6), (16, 16, 16))  # larger than its box and than the 8^3 patch
    canvas, steps, _ = _segment(expert, view)
    assert steps == ("global", "local")  # the first RoI was native; only the regrown one is zoomed
    expected = np.zeros((40, 40, 40), bool)
    expected[6:17, 6:17, 6:17] = True
    assert np.array_equal(canvas.mask_full(), expected)
    assert expert.calls == 4  # three global passes (two regrowths), one local


def test_schedule_runs_new_clicks_first_then_small_and_skips_frozen():
    big = _view(fg=[(3, 3, 3)], order=[None, "fg"])
    big.box = (np.array([0, 0, 0]), np.array([7, 7, 7]))
    small_new = _view(fg=[(3, 3, 3)], order=["fg", "fg"])
    old = _view(prev=True, order=["fg", None])
    assert old.frozen
    assert schedule([old, big, small_new]) == [small_new, big]


# ----------------------------------------------------------------------------- the loop
def _case(k=4, shape=(16, 16, 16)):
    boxes = [Box(1 + c, 3 + c, 2 + c, 1, 4 + c, 2 * c, 2 * c + 1) for c in range(k)]
    prompts = [ClassPrompts(b, [], [], []) for b in boxes]
    image = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    return Case("t.npz", image, np.ones(3), prompts, None, 0, True)


def test_box_expert_reproduces_the_box_cuboids_through_roi_and_fusion():
    case = _case(k=1)
    out = engine.run(case, RunState(threading.Lock()), deadline=1e9, experts=(BoxExpert(), None))
    expected = np.zeros(case.image.shape, np.uint8)
    expected[case.prompts[0].box.slices()] = 1
    assert np.array_equal(out, expected)


def test_time_aware_loop_stops_starting_classes_and_falls_back():
    case = _case(k=4)
    now = [0.0]

    def clock():
        now[0] += 5.0  # every clock read costs 5 s: a class takes 5 s
        return now[0]

    expert = BoxExpert()
    state = RunState(threading.Lock())
    out = engine.run(case, state, deadline=26.0, experts=(expert, None), clock=clock)
    assert 1 <= len(state.done) < 4  # it stopped early ...
    for c, prompts in enumerate(case.prompts):  # ... and every class still has its box
        assert (out == c + 1).any()


def test_frozen_class_keeps_prev_pred_exactly():
    case = _case(k=2)
    prev = np.zeros(case.image.shape, np.uint8)
    prev[2:5, 1:3, 0:2] = 1
    prev[3:6, 1:6, 2:4] = 2
    case.prev_pred = prev
    case.iteration = 1
    case.prompts[0].order = [None]
    case.prompts[1].order = ["bg"]
    case.prompts[1].bg = [(4, 3, 3)]
    out = engine.run(case, None, deadline=1e9, experts=(BoxExpert(), None))
    assert np.array_equal(out == 1, prev == 1)


def test_class_views_find_previous_masks_without_a_volume_per_class():
    case = _case(k=3)
    prev = np.zeros(case.image.shape, np.uint8)
    prev[2:5, 1:3, 0:2] = 1
    prev[7, 8, 9] = 3
    case.prev_pred = prev
    views = class_views(case)
    assert [v.has_prev for v in views] == [True, False, True]
    assert np.array_equal(views[0].prev_mask(), prev == 1)
    lo, hi = views[2].bounds()
    box = case.prompts[2].box
    assert tuple(lo) == (box.z_min, box.y_min, box.x_min) and tuple(hi) == (7, 8, 9)


def test_without_weights_the_engine_falls_back_to_prompts():
    case = _case(k=2)
    out = engine.run(case, None, deadline=1e9, experts=(None, None))
    assert (out == 1).sum() > 0 and (out == 2).sum() > 0


# ----------------------------------------------------------------------------- autobox
def test_regrowth_only_when_the_mask_reaches_an_inner_face():
    roi = Roi((4, 4, 4), (8, 8, 8), (8, 8, 8))
    mask = np.zeros((8, 8, 8), bool)
    mask[2:5, 2:5, 2:5] = True
    assert not touches_open_side(mask, roi, (20, 20, 20))
    mask[2:5, 2:5, 7] = True
    assert touches_open_side(mask, roi, (20, 20, 20))
    assert not touches_open_side(mask, roi, (20, 20, 12))  # that face is the image's edge
    lo, hi = grown_bounds(mask, roi, (20, 20, 20), np.array([8, 8, 8]), np.array([8, 8, 8]))
    assert tuple(lo) == (6, 6, 6) and tuple(hi) == (8, 8, 11)


def test_regrowth_ignores_predictions_in_the_padding_outside_the_image():
    roi = Roi((-4, 0, 0), (8, 8, 8), (8, 8, 8))  # the first 4 slices of the crop are padding
    mask = np.zeros((8, 8, 8), bool)
    mask[0:6, 2:4, 2:4] = True
    lo, hi = grown_bounds(mask, roi, (20, 20, 20), np.array([1, 3, 3]), np.array([1, 3, 3]))
    assert tuple(lo) == (0, 2, 2) and tuple(hi) == (1, 3, 3)


def test_many_classes_complete():
    """100 disjoint boxes: every class must come out as exactly its own cuboid."""
    case = _case(k=1, shape=(24, 40, 40))
    corners = [(z, y, x) for z in (1, 7, 13, 19) for y in (1, 9, 17, 25, 33) for x in (1, 9, 17, 25, 33)]
    case.prompts = [ClassPrompts(Box(z, z + 2, z + 1, y, y + 3, x, x + 3), [], [], []) for z, y, x in corners]
    expected = np.zeros(case.image.shape, np.uint8)
    for c, p in enumerate(case.prompts):
        expected[p.box.slices()] = c + 1
    out = engine.run(case, RunState(threading.Lock()), deadline=1e9, experts=(BoxExpert(), None))
    assert len(case.prompts) == 100 and np.array_equal(out, expected)


def _confine_inputs(canvas, view):
    """The previous mask and the other classes' claimed balls, as ClassSegmenter.segment builds them."""
    prev = view.prev_mask()
    return prev, claimed_balls(canvas, view, prev, (1.0, 1.0, 1.0))


def test_click_confinement_changes_the_mask_only_near_the_click():
    prev_pred = np.zeros((30, 30, 30), np.uint8)
    prev_pred[5:15, 5:15, 5:15] = 1
    click = (10, 10, 17)  # 3 voxels outside the cube's x face: error radius 3 mm
    assert error_radius_mm(prev_pred == 1, click, (1.0, 1.0, 1.0)) == 3.0
    net = (prev_pred == 1).astype(np.float32)
    net[8:12, 8:12, 15:30] = 1  # a missed part from the cube past the click to the far face
    net[25:28, 25:28, 25:28] = 1  # a blob far away, not connected
    net[5:7, 5:7, 5:7] = 0  # the far corner of the cube dropped
    for kind in ("fg", "bg"):
        prompts = ClassPrompts(None, [click] if kind == "fg" else [], [click] if kind == "bg" else [], [kind])
        view = ClassView(1, prompts, None, (slice(5, 15),) * 3, prev_pred)
        canvas = ClassCanvas(prev_pred.shape)
        canvas.lo, canvas.hi = np.array([0, 0, 0]), np.array([30, 30, 30])
        canvas.probs = torch.from_numpy(net.copy())
        confine_to_click(canvas, view, *_confine_inputs(canvas, view), (1.0, 1.0, 1.0))
        assert canvas.probs[10, 10, 17] == 1 and canvas.probs[10, 10, 25] == 1  # within 2 x 3 + 3 mm
        assert canvas.probs[10, 10, 29] == float(kind == "fg")  # one piece with the ball: kept for a fg click
        assert canvas.probs[26, 26, 26] == 0  # a separate addition far away: the previous mask
        assert canvas.probs[5, 5, 5] == 1  # a removal far away: the previous mask
        if kind == "fg":  # a parcel's additions stay in the ball (they run along the shared tissue)
            canvas.probs = torch.from_numpy(net.copy())
            confine_to_click(canvas, view, *_confine_inputs(canvas, view), (1.0, 1.0, 1.0), grow=False)
            assert canvas.probs[10, 10, 25] == 1 and canvas.probs[10, 10, 29] == 0



def test_confinement_lets_a_class_give_up_the_voxels_another_class_claimed():
    """Another class's new positive click inside this class's mask frees a ball there too: the
    network's removal at it stays, a removal elsewhere does not."""
    prev_pred = np.zeros((30, 30, 30), np.uint8)
    prev_pred[5:25, 5:25, 5:25] = 1
    net = (prev_pred == 1).astype(np.float32)
    net[7:10, 7:10, 7:10] = 0  # given up around the other class's click (3 voxels deep: a 9 mm ball)
    net[22:25, 22:25, 22:25] = 0  # dropped far from every click
    own = ClassPrompts(None, [], [(24, 2, 24)], ["bg"])
    other = ClassPrompts(None, [(8, 8, 8)], [], ["fg"])
    view = ClassView(1, own, None, (slice(5, 25),) * 3, prev_pred, others=(other,))
    canvas = ClassCanvas(prev_pred.shape)
    canvas.lo, canvas.hi = np.array([0, 0, 0]), np.array([30, 30, 30])
    canvas.probs = torch.from_numpy(net.copy())
    confine_to_click(canvas, view, *_confine_inputs(canvas, view), (1.0, 1.0, 1.0))
    assert canvas.probs[8, 8, 8] == 0 and canvas.probs[23, 23, 23] == 1
    view = replace(view, others=(replace(other, order=[None]),))  # no new click: nothing claimed
    canvas.probs = torch.from_numpy(net.copy())
    confine_to_click(canvas, view, *_confine_inputs(canvas, view), (1.0, 1.0, 1.0))
    assert canvas.probs[8, 8, 8] == 1

def test_intensity_box_finds_a_bright_blob_and_refuses_a_flood():
    from app.autobox import intensity_box

    image = np.full((30, 40, 40), 40, np.uint8)
    image[10:16, 12:22, 15:30] = 200
    lo, hi = intensity_box(image, (1.0, 1.0, 1.0), (12, 16, 20))
    assert np.all(np.abs(lo - (10, 12, 15)) <= 1) and np.all(np.abs(hi - (15, 21, 29)) <= 1)
    assert intensity_box(image, (1.0, 1.0, 1.0), (25, 5, 5)) is None  # background floods the crop


def test_a_click_the_mask_left_wrong_is_followed_by_the_classical_correction():
    image = np.full((30, 40, 40), 40, np.uint8)
    image[5:25, 5:35, 5:35] = 200  # one bright object
    segmenter = engine.ClassSegmenter(image, np.ones(3), None, None)
    canvas = ClassCanvas(image.shape)
    half = np.zeros(image.shape, np.float32)
    half[5:25, 5:35, 5:20] = 1.0  # the mask holds the object's left half
    canvas.probs, canvas.lo, canvas.hi = torch.from_numpy(half), np.zeros(3, int), np.array(image.shape)
    fg = ClassPrompts(None, [(15, 20, 28)], [], ["fg"])
    view = ClassView(1, fg, None)
    assert segmenter.follow_click(canvas, view)
    mask = canvas.mask_full()
    assert mask[15, 20, 28] and mask[5:25, 5:35, 5:35].mean() > 0.75  # most of the missed half came in
    assert not mask[image == 40].any()  # and nothing of the dark background
    followed = canvas.probs.clone()
    assert not segmenter.follow_click(canvas, view)  # the click is right now: nothing to do
    assert torch.equal(canvas.probs, followed)
    bg = ClassView(1, ClassPrompts(None, [], [(15, 20, 28)], ["bg"]), None)
    assert segmenter.follow_click(canvas, bg) and not canvas.mask_full()[15, 20, 28]


def test_a_followed_click_still_brings_the_correction_except_where_the_network_is_sure():
    """The network covered the clicked voxel but little else: the classical correction of the
    previous mask adds the missed part, minus what the network calls background with certainty."""
    image = np.full((30, 40, 40), 40, np.uint8)
    image[5:25, 5:35, 5:35] = 200
    segmenter = engine.ClassSegmenter(image, np.ones(3), None, None)
    prev = np.zeros(image.shape, bool)
    prev[5:25, 5:35, 5:20] = True  # the previous mask: the object's left half
    net = np.where(prev, 0.9, 0.2).astype(np.float32)  # unsure off the previous mask ...
    net[13:18, 18:23, 26:31] = 0.8  # ... a small blob at the click ...
    net[5:25, 5:35, 32:35] = 0.01  # ... and is sure the object's far edge is background
    canvas = ClassCanvas(image.shape)
    canvas.probs, canvas.lo, canvas.hi = torch.from_numpy(net), np.zeros(3, int), np.array(image.shape)
    view = ClassView.single(None, [(15, 20, 28)], [], ["fg"], prev)
    assert segmenter.follow_click(canvas, view)
    mask = canvas.mask_full()
    assert mask[8:22, 10:30, 20:32].mean() > 0.9  # the missed half came in, within the error's reach
    assert not mask[:, :, 32:35].any() and not mask[image == 40].any()
    no_prev = ClassView.single(None, [(15, 20, 28)], [], ["fg"], None)
    assert not segmenter.follow_click(canvas, no_prev)  # followed, and nothing to correct


def test_round_zero_blends_the_prior_so_the_network_must_be_sure_to_overrule_it():
    canvas = ClassCanvas((4, 4, 4))
    net = np.zeros((4, 4, 4), np.float32)
    prior = np.zeros((4, 4, 4), bool)
    prior[:2] = True
    net[0], net[1], net[2], net[3] = 0.3, 0.1, 0.7, 0.9  # unsure / sure off the prior; unsure / sure beyond it
    canvas.probs, canvas.lo, canvas.hi = torch.from_numpy(net), np.zeros(3, int), np.array((4, 4, 4))
    blend_prior(canvas, prior[canvas.region()], 0.4)
    kept = canvas.mask_full()[:, 0, 0]
    assert kept.tolist() == [True, False, False, True]


def test_a_bad_prior_weight_in_the_environment_falls_back_to_the_default(monkeypatch, capsys):
    monkeypatch.setenv("SEGFM_PRIOR_WEIGHT", "0.25")
    assert engine.env_fraction("SEGFM_PRIOR_WEIGHT", 0.4) == 0.25
    for bad in ("abc", "1.5", "nan"):
        monkeypatch.setenv("SEGFM_PRIOR_WEIGHT", bad)
        assert engine.env_fraction("SEGFM_PRIOR_WEIGHT", 0.4) == 0.4
        assert "SEGFM_PRIOR_WEIGHT" in capsys.readouterr().err


def test_ct_round_zero_drops_mask_voxels_of_the_surroundings_intensity():
    """A mask spilling from a dark object into bright tissue: the refit intensity model removes
    the spill and keeps the object; without it (strength 0) the spill stays."""
    image = np.full((8, 20, 20), 200, np.uint8)
    image[:, 5:15, 5:15] = 20  # the dark object
    probs = np.full(image.shape, 0.1, np.float32)
    probs[:, 5:15, 5:15] = 0.9
    probs[:, 5:15, 15:17] = 0.7  # spill into bright tissue, network unsure
    for strength, spill_kept in ((0.0, True), (engine.CT_INTENSITY, False)):
        canvas = ClassCanvas(image.shape)
        canvas.probs, canvas.lo, canvas.hi = torch.from_numpy(probs.copy()), np.zeros(3, int), np.array(image.shape)
        if strength:
            fuse_intensity(canvas, image, (1.0, 1.0, 1.0), strength, only_lower_inside=False)
        mask = canvas.mask_full()
        assert mask[:, 6:14, 6:14].all() and not mask[:, :, :4].any()
        assert bool(mask[:, 8, 15].all()) == spill_kept
    assert engine.intensity_strength("CT_x") == engine.CT_INTENSITY
    assert engine.intensity_strength("MR_x") == engine.intensity_strength("PET_x") == 0.0
    assert engine.case_options("CT_x") == {"autobox": True, "ct_intensity": engine.CT_INTENSITY, "shared_tissue": False}
    assert engine.case_options("US_x") == {"autobox": False, "ct_intensity": 0.0, "shared_tissue": True}


def test_a_container_class_only_loses_confidence_inside_its_mask():
    """A lung around a lesion: the lung's own intensity model must not make it surer inside its
    mask (it would outvote the lesion in the fusion), while missed voxels of its intensity
    still come in; class_views marks the class whose box holds another's, and the class whose
    box covers most of its holder's (a skull in a head), which gets the same one-sided refit."""
    image = np.full((8, 20, 20), 200, np.uint8)
    image[:, 3:17, 3:17] = 20
    probs = np.full(image.shape, 0.1, np.float32)
    probs[:, 3:17, 3:15] = 0.7
    probs[:, 3:17, 15:17] = 0.3  # missed part of the dark object
    results = {}
    for holds in (False, True):
        canvas = ClassCanvas(image.shape)
        canvas.probs, canvas.lo, canvas.hi = torch.from_numpy(probs.copy()), np.zeros(3, int), np.array(image.shape)
        fuse_intensity(canvas, image, (1.0, 1.0, 1.0), engine.CT_INTENSITY, holds)
        results[holds] = canvas.probs.numpy()
        assert canvas.mask_full()[:, 4:16, 4:16].all()  # the miss comes in either way (edges are smoothed)
    assert results[False][4, 8, 8] > 0.95 and abs(results[True][4, 8, 8] - 0.7) < 1e-3
    big, small = Box.from_bounds((0, 2, 2), (7, 17, 17)), Box.from_bounds((2, 5, 5), (4, 8, 8))
    case = Case("CT_x", image, np.ones(3), [ClassPrompts(big, [], [], []), ClassPrompts(small, [], [], []),
                                           ClassPrompts(None, [(1, 1, 1)], [], ["fg"])], None, 0, True)
    assert [v.holds_a_box for v in class_views(case)] == [True, False, False]
    assert not any(v.lining for v in class_views(case))  # the small box is no layer of the big one
    skull = Box.from_bounds((0, 3, 3), (7, 16, 16))  # most of the big box: a layer of its object
    case = replace(case, prompts=[case.prompts[0], ClassPrompts(skull, [], [], [])])
    assert [(v.holds_a_box, v.lining) for v in class_views(case)] == [(True, False), (False, True)]


def test_other_classes_positive_clicks_are_negatives_and_twins_share_a_box():
    """A voxel has one label: another class's positive clicks are this class's negatives, and its
    newest positive click is a voxel this class must be free to give up (confinement). Classes
    whose boxes overlap by TWIN_IOU or more are twins; a box inside a much larger one is not."""
    image = np.zeros((20, 20, 20), np.uint8)
    big, same, small = (Box.from_bounds((0, 0, 0), (19, 19, 19)), Box.from_bounds((0, 0, 1), (19, 19, 19)),
                        Box.from_bounds((2, 2, 2), (6, 6, 6)))
    prompts = [ClassPrompts(big, [(1, 1, 1)], [(2, 2, 2)], ["fg"]),
               ClassPrompts(same, [(3, 3, 3), (4, 4, 4)], [], ["fg", "fg"]),
               ClassPrompts(small, [], [(5, 5, 5)], ["bg"])]
    case = Case("MR_x", image, np.ones(3), prompts, None, 1, True)
    views = class_views(case)
    assert views[0].negatives == [(2, 2, 2), (3, 3, 3), (4, 4, 4)] and views[0].claimed == [(4, 4, 4)]
    assert views[2].negatives == [(5, 5, 5), (1, 1, 1), (3, 3, 3), (4, 4, 4)]
    assert [len(v.twins) for v in views] == [1, 1, 0] and views[0].twins[0] is prompts[1]
    assert not any(v.parcel for v in views)  # twins and a nested box are not parcels
    left, right = Box.from_bounds((0, 0, 0), (19, 19, 11)), Box.from_bounds((0, 0, 8), (19, 19, 19))
    parcels = Case("MR_x", image, np.ones(3), [ClassPrompts(left, [], [], []), ClassPrompts(right, [], [], []),
                                              ClassPrompts(small, [], [], [])], None, 0, True)
    assert [v.parcel for v in class_views(parcels)] == [True, True, False]
    assert not any(v.organ for v in class_views(parcels))  # two parcels are no tiled organ
    middle = Box.from_bounds((10, 0, 4), (19, 19, 15))
    three = replace(parcels, prompts=[*parcels.prompts, ClassPrompts(middle, [], [], [])])
    assert [v.organ for v in class_views(three)] == [(left, right, middle)] * 2 + [()] + [(left, right, middle)]
    alone = class_views(case, cross_clicks=False)
    assert alone[0].negatives == [(2, 2, 2)] and alone[0].claimed == []
    assert alone[0].others == views[0].others  # the click refit's shared-tissue rule still sees them


def test_click_refit_gives_a_twin_the_tissue_of_its_positive_click():
    """Grey and white matter in one box get the same probabilities; after the clicks each class
    keeps only the tissue like its own click, or, without one, like most of its previous mask.
    Without either nothing changes."""
    image = np.full((8, 12, 24), 150, np.uint8)
    image[:, :, 12:] = 60
    probs = np.full(image.shape, 0.9, np.float32)
    box = (np.zeros(3, int), np.array(image.shape) - 1)
    white = ClassPrompts(Box.from_bounds(*box), [(4, 6, 3)], [], ["fg"])
    grey = ClassPrompts(Box.from_bounds(*box), [(4, 6, 20)], [], ["fg"])
    mostly_white = np.zeros(image.shape, np.uint8)
    mostly_white[:, :, :14] = 1
    unclicked = replace(white, fg=[])
    for own, prev, kept, changed in ((white, None, slice(0, 12), True), (unclicked, None, slice(0, 24), False),
                                     (unclicked, mostly_white, slice(0, 12), True)):
        canvas = ClassCanvas(image.shape)
        canvas.probs, canvas.lo, canvas.hi = torch.from_numpy(probs.copy()), np.zeros(3, int), np.array(image.shape)
        region = None if prev is None else (slice(0, 8), slice(0, 12), slice(0, 14))
        view = ClassView(1, own, box, region, prev, twins=(grey,))
        assert click_refit(canvas, image, view, shared_tissue=True) == changed
        expected = np.zeros(image.shape, bool)
        expected[:, :, kept] = True
        assert (canvas.mask_full() == expected).all()


@pytest.mark.parametrize("relation", ["twins", "companions"])
def test_a_twin_regains_the_tissue_of_its_positive_click_wherever_a_class_holds_it(relation):
    """CSF that lost round 0 to its twins in one brain box: after its positive click it claims
    the voxels of its click's intensity that a twin holds, far from the click too, but not the
    background of that intensity that no class holds, nor its twin's tissue. The same beside a
    class of about its box's region and scale (the brain's CSF beside a hemisphere's cortex:
    ClassView.companions), outside CT."""
    image = np.full((8, 12, 24), 150, np.uint8)
    image[:, :, 12:] = 60
    box = (np.zeros(3, int), np.array(image.shape) - 1)
    prev_pred = np.zeros(image.shape, np.uint8)
    prev_pred[:, :, :20] = 2  # the twin took the whole brain, CSF included; x >= 20 is background
    csf = ClassPrompts(Box.from_bounds(*box), [(4, 6, 13)], [], ["fg"])
    grey = ClassPrompts(Box.from_bounds(*box), [(4, 6, 3)], [], ["fg"])
    canvas = _full_canvas(np.zeros(image.shape, np.float32))
    view = ClassView(1, csf, box, None, prev_pred, **{relation: (grey,)})
    assert click_refit(canvas, image, view, shared_tissue=True)
    expected = np.zeros(image.shape, bool)
    expected[:, :, 12:20] = True
    assert (canvas.mask_full() == expected).all()
    canvas = _full_canvas(np.zeros(image.shape, np.float32))
    click_refit(canvas, image, view, shared_tissue=False)  # CT: absolute intensities, no gain
    assert not canvas.mask_full().any()


def test_a_tissue_around_parcels_regains_its_tissue_from_them_once_they_are_clicked():
    """White matter around cortex parcels (each box in its box): the parcels hold the bright
    white matter beside their dark grey ribbon. After its positive click and theirs, the white
    matter claims its tissue wherever they hold it, not their grey matter nor the unheld
    background; around fewer than MIN_CONTENTS parcels (a lobe around one smaller lobe) nothing."""
    image = np.full((8, 12, 24), 150, np.uint8)
    image[:, :, 12:] = 60
    box = (np.zeros(3, int), np.array(image.shape) - 1)
    prev_pred = np.zeros(image.shape, np.uint8)
    prev_pred[:, :, 4:20] = 2  # the parcels took white (x < 12) and grey (12 <= x < 20) matter
    white = ClassPrompts(Box.from_bounds(*box), [(4, 6, 2)], [], ["fg"])
    parcels = [ClassPrompts(Box.from_bounds((1, 1, 1 + 6 * i), (6, 10, 4 + 6 * i)), [(4, 6, 14)], [], ["fg"])
               for i in range(MIN_CONTENTS)]
    for contents, claimed in ((tuple(parcels), slice(4, 12)), (tuple(parcels[:1]), slice(0, 0))):
        canvas = _full_canvas(np.zeros(image.shape, np.float32))
        view = ClassView(1, white, box, None, prev_pred, contents=contents)
        click_refit(canvas, image, view, shared_tissue=True)
        expected = np.zeros(image.shape, bool)
        expected[:, :, claimed] = True
        assert (canvas.mask_full() == expected).all()


def test_click_refit_drops_the_tissue_of_a_negative_click_unless_a_neighbour_claims_it():
    """A cortex parcel that spilled into white matter: its negative click there takes the white
    matter out of the whole mask. Where another class's positive click has that intensity (parcels
    that share their tissues) the click marks a neighbour, and nothing changes; unless that class's
    box contains the parcel's (the white matter around cortex parcels): its tissue is foreign."""
    image = np.full((8, 12, 24), 150, np.uint8)
    image[:, :, 12:] = 60
    box = (np.zeros(3, int), np.array(image.shape) - 1)
    prev = np.zeros(image.shape, np.uint8)
    prev[:, :, :16] = 1  # mostly the bright tissue
    parcel = ClassPrompts(Box.from_bounds(*box), [], [(4, 6, 14)], ["bg"])
    neighbour = ClassPrompts(Box.from_bounds((0, 0, 12), (7, 11, 23)), [(4, 6, 20)], [], ["fg"])
    for others, shared, kept in (((), True, 12), ((neighbour,), True, 16), ((neighbour,), False, 12)):
        canvas = ClassCanvas(image.shape)
        canvas.probs = torch.from_numpy(prev.astype(np.float32))
        canvas.lo, canvas.hi = np.zeros(3, int), np.array(image.shape)
        view = ClassView(1, parcel, box, (slice(0, 8), slice(0, 12), slice(0, 16)), prev, others=others)
        click_refit(canvas, image, view, shared_tissue=shared)
        expected = np.zeros(image.shape, bool)
        expected[:, :, :kept] = True
        assert (canvas.mask_full() == expected).all()
    small = ClassPrompts(Box.from_bounds((2, 3, 8), (5, 8, 16)), [], [(4, 6, 14)], ["bg"])
    white = ClassPrompts(Box.from_bounds(*box), [(4, 6, 20)], [], ["fg"])
    case = Case("MR_x", image, np.ones(3), [small, white], prev, 1, True)
    views = class_views(case)
    assert views[0].containers == (white,) and views[1].containers == ()
    canvas = ClassCanvas(image.shape)
    canvas.probs = torch.from_numpy(prev.astype(np.float32))
    canvas.lo, canvas.hi = np.zeros(3, int), np.array(image.shape)
    click_refit(canvas, image, views[0], shared_tissue=True)
    assert not canvas.mask_full()[:, :, 12:].any() and canvas.mask_full()[:, :, :12].all()


def test_on_ct_a_refit_after_a_positive_click_may_not_take_most_of_the_mask():
    """CT: a lung (parenchyma 64) that spilled into soft tissue (120), with negative clicks there
    and on a neighbour near the parenchyma's level (70). A positive click on the parenchyma lets
    the refit remove the spill; one on a vessel (248) would take the parenchyma too (valset lung1:
    a lung from 0.93 to 0.60), so that refit is undone and the previous mask kept."""
    image = np.full((8, 12, 24), 120, np.uint8)
    image[:, :, :12] = 64
    image[3:6, 5:8, 3:6] = 248
    image[:, :, 18:] = 70
    prev = np.zeros(image.shape, np.uint8)
    prev[:, :, :16] = 1
    box = (np.zeros(3, int), np.array(image.shape) - 1)
    for fg, ran, kept in (((1, 1, 1), True, 12), ((4, 6, 4), False, 16)):
        lung = ClassPrompts(Box.from_bounds(*box), [fg], [(4, 6, 14), (4, 6, 20)], ["bg", "bg", "fg"])
        canvas = _full_canvas(prev.astype(np.float32))
        view = ClassView(1, lung, box, (slice(0, 8), slice(0, 12), slice(0, 16)), prev)
        assert click_refit(canvas, image, view, shared_tissue=False) == ran
        assert canvas.mask_full()[:, :, :kept].all() and not canvas.mask_full()[:, :, kept:].any()


def _cube_view(kind, click, prev_pred, others=()):
    prompts = ClassPrompts(None, [click] if kind == "fg" else [], [click] if kind == "bg" else [], [kind])
    return ClassView(1, prompts, None, ndimage.find_objects(prev_pred)[0], prev_pred, others=others)


def _full_canvas(probs):
    canvas = ClassCanvas(probs.shape)
    canvas.lo, canvas.hi = np.array([0, 0, 0]), np.array(probs.shape)
    canvas.probs = torch.from_numpy(probs.copy())
    return canvas


def test_a_click_only_moves_the_mask_its_own_way_except_where_another_class_claims():
    prev_pred = np.zeros((30, 30, 30), np.uint8)
    prev_pred[5:25, 5:25, 5:25] = 1
    net = (prev_pred == 1).astype(np.float32)
    net[5:8, 5:8, 5:8] = 0  # a removal
    net[25:28, 10:15, 10:15] = 1  # an addition
    net[18:21, 18:21, 18:21] = 0  # a removal around another class's new positive click
    other = ClassPrompts(None, [(19, 19, 19)], [], ["fg"])
    fg = ClassView(1, ClassPrompts(None, [(10, 10, 26)], [], ["fg"]), None, (slice(5, 25),) * 3, prev_pred,
                          others=(other,))
    canvas = _full_canvas(net)
    keep_click_direction(canvas, fg, *_confine_inputs(canvas, fg))
    assert canvas.probs[6, 6, 6] == 1 and canvas.probs[26, 12, 12] == 1  # a positive click: no removal
    assert canvas.probs[19, 19, 19] == 0  # ... but the voxel another class claimed is given up
    bg = replace(fg, prompts=ClassPrompts(None, [], [(10, 10, 10)], ["bg"]), others=())
    canvas = _full_canvas(net)
    keep_click_direction(canvas, bg, *_confine_inputs(canvas, bg))
    assert canvas.probs[6, 6, 6] == 0 and canvas.probs[26, 12, 12] == 0  # a negative click: no addition


def test_a_click_on_a_one_voxel_sliver_flips_only_the_clicked_voxel():
    prev_pred = np.zeros((30, 30, 30), np.uint8)
    prev_pred[5:25, 5:25, 5:25] = 1
    net = (prev_pred == 1).astype(np.float32)
    net[:, :, 25:28] = 1  # the network grows a whole slab past the face ...
    net[10, 10, 25] = 0  # ... but not at the click
    net[5:8, 5:8, 5:8] = 0  # and drops a far corner
    view = _cube_view("fg", (10, 10, 25), prev_pred)  # one voxel outside the x face
    canvas = _full_canvas(net)
    assert confine_to_sliver(canvas, view, *_confine_inputs(canvas, view))
    changed = canvas.mask_full() != (prev_pred == 1)
    assert changed[10, 10, 25] and changed.sum() == 1  # the click is flipped, nothing else moves
    deep = _cube_view("fg", (10, 10, 28), prev_pred)  # four voxels out: not a sliver
    canvas = _full_canvas(net)
    assert not confine_to_sliver(canvas, deep, *_confine_inputs(canvas, deep)) and torch.equal(canvas.probs,
                                                                                         torch.from_numpy(net))


def test_the_classical_correction_of_a_sliver_adds_only_the_surface_layer_at_the_click():
    from app.clickfix import correct

    image = np.full((30, 30, 30), 100, np.uint8)  # one intensity: everything is like the click
    labels = np.zeros(image.shape, np.uint8)
    labels[5:25, 5:25, 5:25] = 1
    before = labels.copy()
    correct(labels, image, 1, (15, 15, 25), True)  # one voxel outside the x face
    added = np.argwhere(labels != before)
    assert labels[15, 15, 25] == 1 and len(added) <= 5 and np.all(added[:, 2] == 25)
    correct(labels, image, 1, (15, 15, 28), True)  # three voxels out: a deeper error grows a ball
    assert (labels != before).sum() > 20


def test_a_round_zero_mask_that_misses_a_side_of_its_box_gives_way_to_the_box():
    """The organisers' 2D box is the object's bounding box on z_mid, widened by at most
    int(5 x size / 256) voxels per side: a mask that stays clear of a side is another object
    (the heart between the lung bases), so the box cuboid replaces it at BOX_FILL_P."""
    box = Box(4, 20, 12, 5, 30, 5, 30)
    prompts = ClassPrompts(box, [], [], [])
    view = ClassView(1, prompts, box.bounds())
    canvas, steps, _ = _segment(GrowingExpert((4, 12, 12), (20, 22, 22)), view, box_check=True)  # the middle only
    assert steps[-1] == "edges"  # the box, then its edge model (flat on this blank image)
    assert "boxfill" in steps and (canvas.window(box.slices()) == BOX_FILL_P).all()  # the network's too
    canvas, steps, _ = _segment(GrowingExpert((4, 6, 6), (20, 29, 29)), view, box_check=True)  # 1 in from each side
    assert "boxfill" not in steps
    assert "boxfill" not in _segment(GrowingExpert((4, 12, 12), (20, 22, 22)), view)[1]  # check off


def test_twins_tell_their_tissues_apart_at_round_zero_by_their_box_edges():
    """A bright shell (bone) inside a soft-tissue head, both boxes about the same: the per-class
    network gives both the same probabilities; the edge models give the shell the bright voxels
    and the head the rest, in their boxes only."""
    image = np.full((12, 48, 48), 10, np.uint8)  # air
    image[:, 4:44, 4:44] = 100  # soft tissue
    image[:, 8:40, 8:40] = 240  # the skull ...
    image[:, 11:37, 11:37] = 100  # ... around soft tissue inside
    head, bone = Box(0, 11, 6, 4, 43, 4, 43), Box(0, 11, 6, 8, 39, 8, 39)
    results = {}
    for own, twin in ((bone, head), (head, bone)):
        canvas = _full_canvas(np.full(image.shape, 0.6, np.float32))
        assert fuse_edges(canvas, image, own, [twin], (1.0, 1.0, 1.0))
        results[own] = canvas.probs.numpy()
    assert results[bone][6, 9, 20] > 0.8 and results[bone][6, 20, 20] < 0.4  # the shell, not its inside
    assert results[head][6, 5, 20] > 0.8 and results[head][6, 9, 20] < 0.4  # the tissue, not the shell
    assert results[bone][6, 2, 20] == np.float32(0.6)  # outside its box: untouched
    canvas = _full_canvas(np.full(image.shape, 0.6, np.float32))
    assert fuse_edges(canvas, image, bone, [], (1.0, 1.0, 1.0))  # alone: its own model against its ring,
    assert canvas.probs[6, 9, 20] > 0.8 and canvas.probs[6, 20, 20] < 0.4  # which holds the head's tissue


def test_a_bone_just_under_the_skin_stays_the_bone_s_even_in_the_head_s_box_edges():
    """The skull lies in the head's box-edge strips too, and neither ring holds bone: both edge
    models put the bone's level far above their rings, the bone's further (its strips hold
    more bone), and that comparison, not two saturated ones, decides whose it is."""
    image = np.full((12, 48, 48), 10, np.uint8)
    image[:, 4:44, 4:44] = 100
    image[:, 5:43, 5:43] = 240
    image[:, 8:40, 8:40] = 100
    head, bone = Box(0, 11, 6, 4, 43, 4, 43), Box(0, 11, 6, 5, 42, 5, 42)
    probs = {}
    for own, twin in ((bone, head), (head, bone)):
        canvas = _full_canvas(np.full(image.shape, 0.6, np.float32))
        fuse_edges(canvas, image, own, [twin], (1.0, 1.0, 1.0))
        probs[own] = canvas.probs.numpy()[6, 6, 20]  # a skull voxel
    assert probs[bone] > 0.6 > probs[head]


def test_a_twin_relative_model_lowers_at_full_weight_though_its_box_edges_are_mostly_soft_tissue():
    """Ribs are a sliver of their box's edge strips (a body-sized box): the bone's own edge model
    is weak (small weight), but against its twin, the body, soft tissue is clearly not bone. A
    network sure of the whole box (p 0.9) must lose the soft tissue and keep the ribs."""
    image = np.full((12, 48, 48), 10, np.uint8)  # air
    image[:, 2:46, 2:46] = 100  # soft tissue
    for c in range(10, 38, 10):  # ribs: a few bright spots along the sides of the bone's box
        image[:, 8:10, c:c + 2] = image[:, 38:40, c:c + 2] = image[:, c:c + 2, 8:10] = image[:, c:c + 2, 38:40] = 240
    body, bone = Box(0, 11, 6, 2, 45, 2, 45), Box(0, 11, 6, 8, 39, 8, 39)
    weight, _ = prior.edge_llr(image, bone)
    assert weight < 0.3  # the own model alone would move a sure network by less than a logit
    canvas = _full_canvas(np.full(image.shape, 0.9, np.float32))
    assert fuse_edges(canvas, image, bone, [body], (1.0, 1.0, 1.0))
    assert canvas.probs[6, 20, 20] < 0.5 < canvas.probs[6, 8, 10]  # soft tissue out, a rib kept


def test_a_round_zero_mask_unlike_its_box_edges_is_another_object_though_it_spans_the_box():
    """Lung bases: air crescents at the sides of their box, soft tissue between them and around
    the box. A mask of the soft tissue reaches every side, but its grey level is the ring's, not
    the strips' own: another object. The crescents themselves are the object."""
    image = np.full((12, 48, 48), 100, np.uint8)  # soft tissue
    image[:, 10:38, 10:12] = image[:, 10:38, 36:38] = 10  # the air crescents, from side to side of the box
    box = Box(0, 11, 6, 10, 37, 10, 37)
    tissue = np.zeros(image.shape, np.float32)
    tissue[:, 10:38, 10:38] = 0.9
    tissue[image == 10] = 0.1
    assert spans_its_box(_full_canvas(tissue), box)  # the side check alone lets it pass
    assert unlike_its_box_edges(_full_canvas(tissue), image, box)
    assert not unlike_its_box_edges(_full_canvas((image == 10).astype(np.float32) * 0.9), image, box)


def test_on_ct_a_holder_and_its_lining_weigh_their_edge_models_against_each_other(monkeypatch):
    """A body's box holds its bone's; whether the two count as twins (TWIN_IOU) hangs on the
    boxes' random widening. On CT the two compare their box-edge models as twins do either way;
    an organ deep in the body (a small box) is neither's rival, and outside CT nothing changes."""
    image = np.random.default_rng(0).integers(0, 255, (8, 40, 40)).astype(np.uint8)
    body = Box.from_bounds((0, 0, 0), (7, 39, 39))
    bone = Box.from_bounds((0, 4, 4), (7, 31, 31))  # IoU 0.49: a lining, not a twin
    organ = Box.from_bounds((0, 15, 15), (7, 20, 20))
    assert LINING_IOU <= box_iou(body.bounds(), bone.bounds()) < TWIN_IOU
    seen = {}

    def spy(canvas, image, box, twins, spacing, past_widening=False):
        seen[box] = set(twins)
        return False

    monkeypatch.setattr(engine, "fuse_edges", spy)
    for name in ("CT_x", "MR_x"):
        seen.clear()
        prompts = [ClassPrompts(b, [], [], []) for b in (body, bone, organ)]
        segmenter = engine.ClassSegmenter(image, np.ones(3), BoxExpert(), None, **engine.case_options(name))
        for view in class_views(Case(name, image, np.ones(3), prompts, None, 0, True)):
            segmenter.segment(view)
        if name == "CT_x":
            assert seen == {body: {bone}, bone: {body}, organ: set()}
        else:  # outside CT only twins are rivals, and these boxes have none
            assert not any(seen.values())


def test_on_ct_the_edge_model_looks_past_the_widening_except_for_a_lining(monkeypatch):
    """fuse_edges on CT takes the strips past the widening band (app.prior.edge_llr), but a
    lining (a skull in its head's box) keeps them at the box edge: deeper, a shell's strips
    reach what it encloses. Outside CT, at the edge."""
    image = np.random.default_rng(0).integers(0, 255, (8, 20, 20)).astype(np.uint8)
    head, skull = Box.from_bounds((0, 2, 2), (7, 17, 17)), Box.from_bounds((0, 3, 3), (7, 16, 16))
    seen = {}

    def spy(canvas, image, box, twins, spacing, past_widening=False):
        seen[box] = past_widening
        return False

    monkeypatch.setattr(engine, "fuse_edges", spy)
    for name in ("CT_x", "MR_x"):
        case = Case(name, image, np.ones(3), [ClassPrompts(head, [], [], []), ClassPrompts(skull, [], [], [])],
                    None, 0, True)
        segmenter = engine.ClassSegmenter(image, np.ones(3), BoxExpert(), None, **engine.case_options(name))
        for view in class_views(case):
            segmenter.segment(view)
        assert seen == {head: name == "CT_x", skull: False}
