"""The two experts: trained U-Nets behind a tensor-facing `logits` on a RoI.

One class, `Expert`, serves both roles: the global expert sees the whole object (zoomed
RoI), the local expert a native window at a click (paper 003). `load_experts` returns
(global, local) from global_expert.pt and local_expert.pt, None for a missing file (the
engine then runs the global network on the local window). The engine loads them once per
run; training wraps its live model in the same class (`Expert.from_model`), so its
simulated rounds are the engine's own predictions. Precision: bf16 autocast on a GPU, and
on a CPU only where the processor has native bf16 (elsewhere bf16 is ~30x slower than
fp32, measured).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from app.models.unet3d import build_unet, load_weights
from app.prompts import CHANNELS, Others, encode
from app.roi import Roi, from_patch, roi_around

WEIGHTS = Path(os.environ.get("SEGFM_WEIGHTS", Path(__file__).resolve().parents[1] / "weights"))
# The global expert's patch for a RoI that the trained patch would zoom: 64^3 instead of 48^3 zooms
# large objects out less. Valset, shipped weights, guard on: box DSC_AUC 2.398 -> 2.551, DSC_Final
# 0.593 -> 0.635 (organ 0.627 -> 0.691, parcel 0.709 -> 0.761); 64 for every RoI lowered nuclei
# 0.922 -> 0.871, so objects that fit 48^3 natively keep it.
GLOBAL_ZOOMED_PATCH = 64


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device | str, enabled: bool | None = None) -> torch.autocast:
    """bf16 autocast where it pays (see the module docstring); `enabled` forces the choice."""
    device = torch.device(device)
    if enabled is None:
        enabled = device.type == "cuda" or cpu_has_bf16()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


class Expert:
    """One U-Net: prompts on a RoI in, logits on the RoI's crop grid out."""

    def __init__(self, model: torch.nn.Module, patch: int, device: torch.device, bf16: bool | None = None,
                 flips: bool = False, zoomed_patch: int | None = None):
        self.model, self.device = model, torch.device(device)
        self.patch = (int(patch),) * 3
        self.zoomed_patch = (int(zoomed_patch or patch),) * 3
        self.bf16 = bf16
        self.flips = flips  # test-time augmentation: mean logits over the 4 in-plane flips

    def roi_for(self, lo, hi) -> Roi:
        """The RoI of an object's inclusive bounds: the trained patch where the object fits it
        natively, else the larger zoomed patch, so that a large object is zoomed out less."""
        roi = roi_around(lo, hi, self.patch)
        return roi_around(lo, hi, self.zoomed_patch) if roi.zoomed else roi

    @classmethod
    def load(cls, path: Path, device: torch.device, zoomed_patch: int | None = None, flips: bool = False) -> Expert:
        """From a weights file; `zoomed_patch` (default: the trained patch) serves zoomed RoIs. A file
        with fewer input channels than app.prompts.CHANNELS gets zero weights for the rest."""
        weights = torch.load(path, map_location="cpu", weights_only=False)
        model = build_unet({**weights["model_config"], "in_channels": len(CHANNELS)})
        load_weights(model, weights["model"])
        return cls(model.eval().to(device), weights["meta"]["patch"], device, flips=flips, zoomed_patch=zoomed_patch)

    @classmethod
    def from_model(cls, model: torch.nn.Module, patch: int, device, bf16: bool | None = None,
                   zoomed_patch: int | None = None) -> Expert:
        """A live (training) model behind the engine's interface; no copy, no mode change."""
        return cls(model, patch, device, bf16, zoomed_patch=zoomed_patch)

    @torch.inference_mode()
    def logits(self, image: torch.Tensor, roi: Roi, spacing, box=None, fg=(), bg=(), prev=None,
               prev_on_crop: bool = False, others: Others | None = None) -> torch.Tensor:
        """(D, H, W) float32 logits on the crop grid of `roi` (CPU tensor); prompts as app.prompts.encode."""
        x = encode(image, roi, spacing, box, fg, bg, prev, prev_on_crop, others)[None].to(self.device)
        with autocast(self.device, self.bf16):
            if self.flips:
                out = sum(self.model(x.flip(d)).float().flip(d) for d in ([], [3], [4], [3, 4])) / 4
            else:
                out = self.model(x).float()
        return from_patch(out[0], roi)[0].cpu()


def load_experts(weights_dir: Path = WEIGHTS) -> tuple[Expert | None, Expert | None]:
    """(global, local) experts from weights_dir; None for a missing file.

    SEGFM_ZOOMED_PATCH sets the global expert's patch for zoomed RoIs (GLOBAL_ZOOMED_PATCH),
    SEGFM_FLIPS=1 turns on flip averaging. cudnn.benchmark stays off: a run makes a handful of
    forward passes, too few to repay tuning.
    """
    device = pick_device()
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # set: a shared machine (evaluations)
        torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    flips = os.environ.get("SEGFM_FLIPS", "0") == "1"
    patches = {"global": int(os.environ.get("SEGFM_ZOOMED_PATCH", GLOBAL_ZOOMED_PATCH)), "local": None}
    found = {name: weights_dir / f"{name}_expert.pt" for name in patches}
    return tuple(Expert.load(path, device, patches[name], flips) if path.exists() else None
                 for name, path in found.items())
