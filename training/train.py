"""Train the global or the local expert: one compact script, CPU first, GPU and torchrun too.

    python -m training.train --expert global --minutes 60            # resumes runs/global if present
    python -m training.train --expert local --init weights/global_expert.pt --minutes 30
    torchrun --nproc_per_node 2 -m training.train --expert global     # DDP: gloo on CPU, nccl on GPUs
    python -m training.train --smoke                                 # CI: a few steps, tiny patches

Data: procedural cases (training.synth) mixed with folders of challenge-format labelled
files (--data, training.data; by default the bundled real cases' training split), some
relabelled by rule into touching parcels. Every sample replays
0..max_rounds prompt rounds through the engine's own per-class predictor
(app.engine.ClassSegmenter around the live model: autobox, RoI, regrowth, local pass), in the
multi-class case the engine would read (every class boxed and clicked each round), so
training sees the masks the engine would make. Global samples are the RoI the engine takes
next; local samples a native window at the newest click (or on the mask's boundary) with
this round's global mask as the previous one, as in the engine's local pass.
Loss Dice + BCE. AdamW, warm-up + cosine, a checkpoint every few minutes. Precision per
machine: bf16 autocast on a GPU or a CPU with native bf16 (the engine's rule; fp32 for CPU patches
whose deepest map is 2 voxels deep, see use_bf16), else fp32; a non-finite gradient skips its update.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from scipy import ndimage
from torch.nn import functional as F

from app.canvas import ClassCanvas
from app.engine import ClassSegmenter, case_options
from app.experts import GLOBAL_ZOOMED_PATCH, Expert, autocast, cpu_has_bf16
from app.io import Case, ClassPrompts
from app.models.unet3d import build_unet, config_dict, load_weights
from app.prompts import encode
from app.roi import crop, prompt_bounds, to_patch, window_at
from app.views import ClassView, class_views
from harness import loop as harness_loop
from harness.official import error_click
from training import synth
from training.data import BUNDLED_SPLIT, LabelledData, bundled_folders, parse_weights, resume_start
from training.interaction import (
    clicked_error,
    jittered_box,
    lost_to_others,
    other_click,
    others_previous,
    perturbed_mask,
    sampled_click,
    target_weights,
)


# ----------------------------------------------------------------------------- defaults
@dataclass
class TrainConfig:
    expert: str = "global"          # global: zoomed RoI of the object; local: native window at a click
    global_weights: str = "weights/global_expert.pt"  # a local run: the global expert it ships with
    patch: int = 48
    zoomed_patch: int = GLOBAL_ZOOMED_PATCH  # the engine's patch for a RoI that `patch` would zoom out
    batch: int = 4                  # samples per process and micro-step
    global_batch: int = 0           # samples per optimiser step over all processes (0: batch x world size);
                                    # reached by gradient accumulation, so it does not depend on the world size
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    max_steps: int = 2000           # length of the cosine schedule
    minutes: float = 60.0           # wall-clock budget of this invocation (resume continues)
    max_rounds: int = 3             # engine rounds replayed before the trained one
    data: list = field(default_factory=list)  # folders of challenge-format training files; [] = the bundled cases
    split_file: str = ""            # "<split> <pattern>" lines (training.data); default the bundled split
    data_weights: str = ""          # sampling weights, e.g. "CT=2,Microscopy=0.5" (training.data.parse_weights)
    data_workers: int = 0           # DataLoader workers reading --data ahead of the step
    synth_fraction: float = 0.85    # share of procedural samples (the bundled data holds two small cases)
    synth_looks: str = ""           # procedural look weights, e.g. "ct=3" (others 1; look_probabilities)
    parcel_fraction: float = 0.3    # share of data samples relabelled by rule into touching parcels
    val_data: str = ""              # a folder of labelled files: the official loop on it every eval, best kept
    local_fraction: float = 0.3     # share of local-window samples in a global run (one net, both views)
    click_weight: float = 0.0       # BCE on the error the newest click marks, this much beside Dice + BCE (loss_of)
    device: str = "cpu"
    precision: str = "auto"         # auto: bf16 on GPU or native-bf16 CPU, else fp32; or bf16 / fp32
    threads: int = 2
    seed: int = 0
    out_dir: str = ""               # default runs/<expert>
    init: str = ""                  # weights file to start from when no checkpoint exists (fine-tune)
    export: str = ""                # default weights/<expert>_expert.pt
    export_from: str = ""           # only export this checkpoint (e.g. a running run's) to --export, then stop
    ckpt_minutes: float = 5.0
    eval_minutes: float = 10.0
    val_cases: int = 12
    log_every: int = 10
    smoke: bool = False
# -----------------------------------------------------------------------------


class CasePool:
    """Procedural cases, each reused for a few samples (another class, other prompts).

    Generation costs about as much as a training sample; reuse keeps it a small share
    of the step while the pool still turns over every few steps.
    """

    def __init__(self, size: int = 16, reuse: float = 0.6, looks: str = ""):
        self.size, self.reuse, self.cases = size, reuse, []
        self.look_p = look_probabilities(looks) if looks else None

    def draw(self, rng: np.random.Generator, cfg: TrainConfig, stream):
        if stream is not None and rng.random() >= cfg.synth_fraction:
            case = next(stream)
            return synth.parcellate(rng, case) if rng.random() < cfg.parcel_fraction else case
        if len(self.cases) == self.size and rng.random() < self.reuse:
            return self.cases[int(rng.integers(self.size))]
        look = None if self.look_p is None else synth.LOOKS[int(rng.choice(len(synth.LOOKS), p=self.look_p))]
        case = synth.generate(rng, look)
        self.cases = (self.cases + [case])[-self.size:]
        return case


def look_probabilities(text: str) -> np.ndarray:
    """'ct=3,us=0.5' (training.data.parse_weights) -> sampling probabilities over synth.LOOKS
    (unnamed looks weigh 1)."""
    weights = dict.fromkeys(synth.LOOKS, 1.0)
    for look, value in parse_weights(text).items():
        if look not in weights:
            raise ValueError(f"unknown look {look!r} in {text!r}; looks are {synth.LOOKS}")
        weights[look] = value
    w = np.array(list(weights.values()))
    if w.min() < 0 or w.sum() <= 0:
        raise ValueError(f"look weights must be >= 0 and not all 0: {text!r}")
    return w / w.sum()


def segmenter_for(model, case, cfg: TrainConfig) -> ClassSegmenter:
    """The engine's per-class predictor around the live model, as it would run on this case."""
    return ClassSegmenter(case.image, case.spacing, *engine_experts(model, cfg), **case_options(file_name(case)))


def engine_experts(model, cfg: TrainConfig) -> tuple[Expert, Expert | None]:
    """The engine's (global, local) experts with the live model in its place: a global run's
    model serves both views (no local file); a local run's sits beside the global expert it
    will ship with (--global-weights), whose masks its windows start from in the engine."""
    live = Expert.from_model(model, cfg.patch, cfg.device, use_bf16(cfg, model),
                             cfg.zoomed_patch if cfg.expert == "global" else None)
    if cfg.expert == "global":
        return live, None
    return frozen_expert(cfg.global_weights, cfg.device, cfg.zoomed_patch), live


@functools.cache
def frozen_expert(path: str, device: str, zoomed_patch: int) -> Expert:
    """A shipped weights file as the engine loads it, read once per process."""
    if not Path(path).exists():
        raise SystemExit(f"--global-weights {path}: no such file (a local run needs the global expert it ships with)")
    return Expert.load(Path(path), torch.device(device), zoomed_patch)


def file_name(case) -> str:
    """The name a challenge file of this case would have: its modality prefix picks the engine's options."""
    return f"{synth.MODALITY_PREFIX[case.look]}_case"


def simulate(rng, case, segmenter: ClassSegmenter, cfg: TrainConfig):
    """A target (containers more often: training.interaction.target_weights) and its class's view
    after 0..max_rounds engine rounds on its own predictions.

    The rounds run inside the multi-class case the engine would read (app.views.class_views):
    every class has its box, or starts as the organisers start a box-less class, with one click
    at its centre; every round each other class gets a click too (training.interaction.other_click).
    So the target meets what it meets at inference: twins, parcels and linings by their boxes,
    and the others' positive clicks as its negatives and as voxels it must give up.
    The first previous mask is sometimes a perturbed truth, for variety beyond the model's errors.
    From the first round on, the other classes hold their voxels of the previous segmentation
    (training.interaction.others_previous: the truth, warped; segmenting every class every round
    would cost K times the sample), and mostly also what the target's mask missed
    (training.interaction.lost_to_others).
    """
    ids = [int(v) for v in np.unique(case.labels)[1:]]
    truths = [case.labels == label for label in ids]
    data_crop = getattr(case, "label_id", None) is not None  # a data crop's label is 1
    target = 1 if data_crop else int(rng.choice(ids, p=target_weights(truths)))
    t = ids.index(target)
    use_box = rng.random() < (0.2 if case.no_box else 0.9)
    prompts = [ClassPrompts(jittered_box(rng, m) if use_box else None, [], [], []) for m in truths]
    if not use_box:
        for p, m in zip(prompts, truths):
            p.fg.append(error_click(np.zeros_like(m), m)[0])
            p.order.append("fg")
    truth, mine, prev, held = truths[t], prompts[t], None, None

    def view_on(prev_mask: np.ndarray | None) -> ClassView:
        others = None if held is None else lost_to_others(rng, held, truth, prev_mask)
        return simulated_view(case, prompts, t, prev_mask, others)

    rounds = int(rng.integers(1, cfg.max_rounds + 1)) if rng.random() < 0.7 else 0
    for _ in range(rounds):
        if prev is None and use_box and rng.random() < 0.25:
            prev = perturbed_mask(rng, truth, case.spacing)
        else:
            prev = segmenter.segment(view_on(prev))[0].mask_full()
        if held is None:
            classes = np.searchsorted(ids, case.labels) + 1
            classes[case.labels == 0] = 0
            held = others_previous(rng, classes.astype(np.uint8), t + 1)
        click = sampled_click(rng, prev, truth, case.spacing)
        if click is None:
            break
        add_click(mine, click)
        for o, (p, m) in enumerate(zip(prompts, truths)):
            if o != t:
                add_click(p, other_click(rng, m, prev, p.box))
    return truth, segmenter.prepare(view_on(prev))


def add_click(prompts: ClassPrompts, click: tuple[tuple[int, int, int], bool]) -> None:
    """Append one (zyx, is_fg) click to a class's prompts, in order."""
    (prompts.fg if click[1] else prompts.bg).append(click[0])
    prompts.order.append("fg" if click[1] else "bg")


def simulated_view(case, prompts: list[ClassPrompts], t: int, prev: np.ndarray | None,
                   held: np.ndarray | None = None) -> ClassView:
    """Class t's view of a case holding `prompts`, with `prev` (boolean) as its previous mask and
    `held` (labels 1..K, none t + 1) the other classes' voxels of the previous segmentation."""
    prev_pred = np.zeros(case.image.shape, np.uint8) if held is None else held.copy()
    if prev is not None:
        prev_pred[prev] = t + 1
    has_boxes = prompts[t].box is not None
    return class_views(Case(file_name(case), case.image, case.spacing, prompts, prev_pred if prev_pred.any() else None,
                            0, has_boxes))[t]


def global_sample(rng, case, model, cfg: TrainConfig):
    """The global expert's next input as the engine builds it, and the target on its RoI."""
    segmenter = segmenter_for(model, case, cfg)
    truth, view = simulate(rng, case, segmenter, cfg)
    p = view.prompts
    prev = view.prev_mask()
    if view.starts_at_click:  # the engine looks at a native window at the click first
        canvas = ClassCanvas(case.image.shape)
        segmenter.local_pass(canvas, view, p.fg[-1])
        prev = canvas.mask_full()
    lo, hi = prompt_bounds(view.box, p.fg, prev)
    roi = segmenter.global_expert.roi_for(lo - rng.integers(0, 4, 3), hi + rng.integers(0, 4, 3))
    prev_t = None if prev is None else torch.from_numpy(prev)
    x = encode(segmenter.image, roi, case.spacing, *segmenter.prompts_for(view), prev_t,
               others=segmenter.others_for(view))
    y = to_patch(crop(torch.from_numpy(truth)[None].float(), roi), roi) > 0.5
    click = newest_click(view) if cfg.click_weight and prev is not None else None  # unread at weight 0
    marked = clicked_error(prev, truth, click) if click is not None else np.zeros_like(truth)
    w = to_patch(crop(torch.from_numpy(marked)[None].float(), roi), roi) > 0.5
    return x, torch.cat([y, w]).float()


def local_sample(rng, case, model, cfg: TrainConfig):
    """The local expert's input as the engine builds it: a native window at the newest click
    (or on the boundary of the global mask), this round's global mask as the previous one."""
    segmenter = segmenter_for(model, case, cfg)
    truth, view = simulate(rng, case, segmenter, cfg)
    canvas, _, _ = segmenter.global_pass(view)
    newest = view.prompts.newest_click
    mask = canvas.mask_full()
    edge = np.argwhere(mask ^ ndimage.binary_erosion(mask)) if mask.any() else np.argwhere(truth)
    if newest is not None and rng.random() < 0.7:
        centre = np.asarray(newest[0])
    else:
        centre = edge[int(rng.integers(len(edge)))]
    centre = centre + rng.integers(-cfg.patch // 8, cfg.patch // 8 + 1, 3)
    roi = window_at(centre, (cfg.patch,) * 3)
    prev = torch.from_numpy(canvas.mask_on(roi))
    x = encode(segmenter.image, roi, case.spacing, *segmenter.prompts_for(view), prev, prev_on_crop=True,
               others=segmenter.others_for(view))
    y = crop(torch.from_numpy(truth)[None].float(), roi)
    click = newest_click(view) if cfg.click_weight else None  # the mark is unread at weight 0
    local = None if click is None else tuple(int(c - s) for c, s in zip(click, roi.start))
    w = torch.from_numpy(clicked_error(prev.numpy(), y[0].numpy() > 0.5, local))[None].float()
    return x, torch.cat([y, w])


def newest_click(view: ClassView):
    """The voxel of the click added in the trained round, or None (round 0, or no new click)."""
    p = view.prompts
    return p.newest_click[0] if p.has_new_click and p.newest_click is not None else None


def make_batch(rng, cfg, model, stream, pool: CasePool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """cfg.batch samples as (x, y) batches, one per patch size: a zoomed global RoI takes the
    engine's larger zoomed patch, every other sample the trained one. y's channels: the target,
    and the error the newest click marks (loss_of)."""
    groups: dict[tuple, list] = {}
    for _ in range(cfg.batch):
        case = pool.draw(rng, cfg, stream)
        local = cfg.expert == "local" or rng.random() < cfg.local_fraction
        x, y = (local_sample if local else global_sample)(rng, case, model, cfg)
        groups.setdefault(tuple(x.shape), []).append((x, y))
    return [(torch.stack([s[0] for s in g]), torch.stack([s[1] for s in g])) for g in groups.values()]


def loss_of(logits: torch.Tensor, y: torch.Tensor, click_weight: float) -> torch.Tensor:
    """Dice + BCE on the target (y's channel 0), plus click_weight x the mean BCE over the error
    the newest click marks (channel 1; training.interaction.clicked_error). Why: with the plain
    loss the clicked error is a small share of the patch's, and the network's own response to a
    click (its logits with the click minus without it) lowered DSC on procedural aseg brains
    when let through unconfined (-0.0055 per click, harness/EXPERIMENTS.md). Not a weight on every
    wrong voxel of the previous mask: that biased every prediction against it (dice_bce)."""
    loss = dice_bce(logits, y[:, :1])
    if click_weight:
        marked = y[:, 1:]
        bce = F.binary_cross_entropy_with_logits(logits, y[:, :1], reduction="none")
        loss = loss + click_weight * (bce * marked).sum() / marked.sum().clamp_min(1.0)
    return loss


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice + BCE, unweighted: weighting up the voxels where the previous mask is wrong biases
    every prediction against the previous mask (measured: masks flip-flopped between clicks)."""
    probs = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    dice = 1 - (2 * (probs * target).sum(dims) + 1) / (probs.sum(dims) + target.sum(dims) + 1)
    return dice.mean() + F.binary_cross_entropy_with_logits(logits, target)


def use_bf16(cfg: TrainConfig, model) -> bool:
    """The engine's rule, except on a CPU where the deepest feature map would be 2 voxels deep:
    there torch's bf16 conv3d weight gradient is garbage (1e33, measured at 2x2x2 and 2x6x6 with
    torch 2.13; 3 and more are right), which is the CI-sized smoke run's 16^3 patch."""
    if cfg.precision != "auto":
        return cfg.precision == "bf16"
    return cfg.device.startswith("cuda") or (cpu_has_bf16() and cfg.patch // model.divisor > 2)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1), 1.0)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def validate(model, cfg: TrainConfig) -> dict:
    """DSC on fixed synthetic cases (seeds never drawn in training) through the engine's
    predictor: box (or the no-box start) and after two official clicks."""
    model.eval()
    scores = {"box": [], "click2": []}
    for i in range(cfg.val_cases):
        rng = np.random.default_rng(10**9 + i)
        case = synth.generate(rng, synth.LOOKS[i % len(synth.LOOKS)])
        truth = case.labels == 1
        segmenter = segmenter_for(model, case, cfg)
        box = None if case.no_box else jittered_box(rng, truth)
        fg, bg, order = ([] if box is not None else [error_click(np.zeros_like(truth), truth)[0]]), [], []
        order = ["fg"] if fg else []
        prev = segmenter.segment(ClassView.single(box, fg, bg, order, None))[0].mask_full()
        scores["box"].append(dice(prev, truth))
        for _ in range(2):
            click = error_click(prev, truth)
            if click is None:
                break
            (fg if click[1] else bg).append(click[0])
            order.append("fg" if click[1] else "bg")
            prev = segmenter.segment(ClassView.single(box, fg, bg, order, prev))[0].mask_full()
        scores["click2"].append(dice(prev, truth))
    model.train()
    return {k: float(np.mean(v)) for k, v in scores.items()}


@torch.no_grad()
def validate_official(model, cfg: TrainConfig) -> dict:
    """The harness's official loop (boxes, 5 clicks, DSC/NSD) on every labelled file of
    --val-data, in process through the engine; means over cases."""
    from app import engine

    model.eval()
    experts = engine_experts(model, cfg)
    predictor = harness_loop.InProcessPredictor(lambda case, state, deadline: engine.run(case, None, deadline, experts))
    records = []
    tasks = harness_loop.load_tasks(Path(cfg.val_data))
    with open(os.devnull, "w") as quiet:
        for path in sorted(Path(cfg.val_data).glob("*.npz")):
            case = harness_loop.load_labelled(path)
            box_mode = harness_loop.default_box_mode(case.name, tasks)
            records.append(harness_loop.run_case(case, predictor, box_mode, log=quiet)[0])
    model.train()
    keys = ("dsc_auc", "dsc_final", "nsd_final")
    return {k: float(np.mean([r[k] for r in records])) for k in keys if records and k in records[0]}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def export(model, cfg: TrainConfig, step: int, path: str) -> None:
    """A small inference file: fp16 weights plus what is needed to rebuild and trust them."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    meta = {"expert": cfg.expert, "patch": cfg.patch, "step": step, "generator_version": synth.GENERATOR_VERSION}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "model_config": config_dict(model), "meta": meta}, path + ".tmp")
    os.replace(path + ".tmp", path)


def export_checkpoint(cfg: TrainConfig) -> None:
    """Weights of a checkpoint (a running run's too: it is replaced atomically) for the harness."""
    ckpt = torch.load(cfg.export_from, map_location="cpu", weights_only=False)
    model = build_unet(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    export(model, cfg, ckpt["step"], cfg.export or f"weights/{cfg.expert}_expert.pt")
    print(f"exported {cfg.export_from} at step {ckpt['step']}", flush=True)


def main(cfg: TrainConfig) -> None:
    if cfg.export_from:
        return export_checkpoint(cfg)
    distributed = "WORLD_SIZE" in os.environ
    rank = 0
    if distributed:
        faulthandler.enable()  # a native abort (gloo, rare) prints each thread's Python stack: where it was
        dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
        rank = dist.get_rank()
        if cfg.device.startswith("cuda"):
            cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir or f"runs/{cfg.expert}")
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"
    model = build_unet().to(cfg.device)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, rng, ckpt = 0, np.random.default_rng([cfg.seed, rank]), None
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=cfg.device, weights_only=False)
        if ckpt["model_config"]["in_channels"] != model.config.in_channels:
            raise SystemExit(f"{ckpt_path} holds a {ckpt['model_config']['in_channels']}-channel network, this code "
                             f"feeds {model.config.in_channels} (app.prompts.CHANNELS): start a new --out-dir "
                             f"with --init from its export (python -m training.train --export-from {ckpt_path} "
                             f"--export {out / 'export.pt'}; without --export it would replace weights/)")
        model.load_state_dict(ckpt["model"])
        optim.load_state_dict(ckpt["optim"])
        step = ckpt["step"]
        cfg.init = cfg.init or ckpt["config"].get("init", "")  # the lineage stays on record (manifest)
        rng.bit_generator.state = ckpt["rng"][rank] if rank < len(ckpt["rng"]) else rng.bit_generator.state
        print(f"resumed {ckpt_path} at step {step}", flush=True)
    elif cfg.init:
        weights = torch.load(cfg.init, map_location=cfg.device, weights_only=False)
        load_weights(model, weights["model"])  # a file with fewer channels: zero weights for the new ones
        print(f"initialised from {cfg.init}", flush=True)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    bf16 = use_bf16(cfg, model)
    if rank == 0:
        print(f"precision: {'bf16' if bf16 else 'fp32'} autocast ({cfg.precision}; native CPU bf16: {cpu_has_bf16()}; "
              f"deepest map {cfg.patch // model.divisor}^3)",
              flush=True)
    stream = None
    if not cfg.smoke or cfg.data:
        data = labelled_data(cfg, rank, distributed)
        stream = data.stream(cfg.seed, rank, resume_start(ckpt.get("data") if ckpt else None, rank), cfg.data_workers)
    pool = CasePool(looks=cfg.synth_looks)
    start = last_ckpt = last_eval = time.time()
    seen, loss_sum, tick, best, skipped = 0, 0.0, time.time(), -1.0, 0
    history = out / "history.jsonl"
    stop = step >= cfg.max_steps or cfg.minutes <= 0
    world = dist.get_world_size() if distributed else 1
    accum = max(1, round(cfg.global_batch / (cfg.batch * world))) if cfg.global_batch else 1
    if rank == 0:
        print(f"global batch {cfg.batch * world * accum} = {cfg.batch} x {world} processes x {accum} accumulated",
              flush=True)
    while not stop:
        for group in optim.param_groups:
            group["lr"] = lr_at(step, cfg)
        optim.zero_grad(set_to_none=True)
        for micro in range(accum):
            batches = make_batch(rng, cfg, model, stream, pool)
            for i, (x, y) in enumerate(batches):  # DDP: one gradient sync per step, on the last backward
                last = micro == accum - 1 and i == len(batches) - 1
                share = x.shape[0] / (cfg.batch * accum)
                with nullcontext() if last or not distributed else net.no_sync():
                    with autocast(cfg.device, bf16):
                        logits = net(x.to(cfg.device))
                    loss = loss_of(logits.float(), y.to(cfg.device), cfg.click_weight)
                    (loss * share).backward()
                seen += x.shape[0]
                loss_sum += loss.item() * share
        if torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)):
            optim.step()
        else:  # one bad batch must not turn every weight into NaN (DDP: every rank sees the same norm)
            skipped += 1
            print(f"step {step + 1}: non-finite gradient norm, update skipped ({skipped} so far)", flush=True)
        step += 1
        if rank == 0 and step % cfg.log_every == 0:
            rate = seen / (time.time() - tick)
            record = {"step": step, "loss": loss_sum / cfg.log_every, "samples_per_s": rate,
                      "lr": lr_at(step, cfg), "minutes": (time.time() - start) / 60}
            print(json.dumps(record), flush=True)
            with history.open("a") as f:
                f.write(json.dumps(record) + "\n")
            seen, loss_sum, tick = 0, 0.0, time.time()
        now = time.time()
        if rank == 0 and now - last_eval > cfg.eval_minutes * 60:
            record = {"step": step, "val": validate(model, cfg)}
            if cfg.val_data:
                record["official"] = validate_official(model, cfg)
                if record["official"].get("dsc_auc", -1) > best:
                    best = record["official"]["dsc_auc"]
                    export(model, cfg, step, str(out / "best_expert.pt"))
                    record["best"] = True
            print(json.dumps(record), flush=True)
            with history.open("a") as f:
                f.write(json.dumps(record) + "\n")
            last_eval = time.time()
        # Every rank acts on rank 0's clock: only rank 0 validates, so the ranks' clocks disagree,
        # and a rank that stopped or checkpointed alone would wait forever in a collective.
        save_now, stop = agreed([now - last_ckpt > cfg.ckpt_minutes * 60,
                                 time.time() - start >= cfg.minutes * 60 or step >= cfg.max_steps], cfg, distributed)
        if save_now:
            save_checkpoint(ckpt_path, model, optim, step, rng, stream, cfg, distributed)
            last_ckpt = time.time()
    save_checkpoint(ckpt_path, model, optim, step, rng, stream, cfg, distributed)
    if rank == 0:
        export(model, cfg, step, cfg.export or f"weights/{cfg.expert}_expert.pt")
        print(f"done at step {step}", flush=True)
    if distributed:  # leave together: a rank that tears down while rank 0 exports can abort in gloo
        dist.barrier()
        dist.destroy_process_group()


def agreed(flags: list[bool], cfg: TrainConfig, distributed: bool) -> list[bool]:
    """Rank 0's flags on every rank (one tiny broadcast per step when distributed)."""
    if not distributed:
        return flags
    t = torch.tensor(flags, dtype=torch.uint8, device=cfg.device)
    dist.broadcast(t, 0)
    return [bool(v) for v in t.tolist()]


def labelled_data(cfg: TrainConfig, rank: int, distributed: bool) -> LabelledData:
    """--data folders (or the bundled cases with their split); rank 0 builds the index first."""
    folders = cfg.data or bundled_folders()
    split_file = cfg.split_file or ("" if cfg.data else str(BUNDLED_SPLIT))
    kwargs = {"split": "train" if split_file else None, "split_file": split_file or None,
              "weights": cfg.data_weights or None, "verbose": rank == 0}
    if distributed and rank != 0:
        dist.barrier()
        return LabelledData(folders, refresh=False, **kwargs)
    data = LabelledData(folders, **kwargs)
    if rank == 0:
        print(data.describe(), flush=True)
    if distributed:
        dist.barrier()
    return data


def save_checkpoint(path, model, optim, step, rng, stream, cfg, distributed) -> None:
    """Every rank's generator and data-stream state goes in, so a resumed run (any number of
    processes) continues each rank's streams."""
    mine = (rng.bit_generator.state, stream.state_dict() if stream is not None else None)
    states = [mine]
    if distributed:
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, mine)
        if dist.get_rank() != 0:
            return
    ckpt = {"model": model.state_dict(), "optim": optim.state_dict(), "step": step,
            "rng": [s[0] for s in states], "data": [s[1] for s in states if s[1] is not None],
            "config": asdict(cfg), "model_config": config_dict(model)}
    torch.save(ckpt, str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)


def parse_args(argv=None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        if f.type == "bool":
            parser.add_argument(f"--{f.name.replace('_', '-')}", action="store_true")
        elif f.type == "list":
            parser.add_argument(f"--{f.name.replace('_', '-')}", nargs="+", default=[])
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    if cfg.smoke:  # CI-sized: tiny patches, a few steps, no data unless --data, outputs kept out of weights/
        cfg.patch, cfg.zoomed_patch, cfg.batch, cfg.max_rounds = 16, 16, 2, 1
        cfg.max_steps, cfg.val_cases = min(cfg.max_steps, 4), min(cfg.val_cases, 2)
        cfg.out_dir = cfg.out_dir or "runs/smoke"
        cfg.export = cfg.export or "runs/smoke/expert.pt"
        cfg.eval_minutes = 0.2
    return cfg


if __name__ == "__main__":
    main(parse_args())
