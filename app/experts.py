"""The two experts: trained U-Nets behind a numpy/tensor-facing predict on a RoI.

GlobalExpert sees the whole object (zoomed RoI), LocalExpert a native window at a click
(paper 003). Weights are loaded once per run. On a GPU: bf16 autocast; on a CPU: bf16
autocast only where the processor has native bf16 (else fp32 is faster), threads capped.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from app.models.unet3d import build_unet
from app.prompts import encode
from app.roi import Roi, from_patch

WEIGHTS = Path(os.environ.get("SEGFM_WEIGHTS", Path(__file__).resolve().parents[1] / "weights"))


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Expert:
    """One U-Net: prompts on a RoI in, logits on the RoI's crop grid out."""

    def __init__(self, path: Path, device: torch.device):
        weights = torch.load(path, map_location="cpu", weights_only=False)
        self.model = build_unet(weights["model_config"])
        self.model.load_state_dict({k: v.float() for k, v in weights["model"].items()})
        self.model.eval().to(device)
        self.patch = (int(weights["meta"]["patch"]),) * 3
        self.device = device
        use_bf16 = device.type == "cuda" or _cpu_has_bf16()
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    @torch.inference_mode()
    def logits(self, image: torch.Tensor, roi: Roi, spacing, box=None, fg=(), bg=(), prev=None) -> torch.Tensor:
        """(D, H, W) float32 logits on the crop grid of `roi` (CPU tensor)."""
        x = encode(image, roi, spacing, box, fg, bg, prev)[None].to(self.device)
        with self.autocast:
            out = self.model(x).float()
        return from_patch(out[0], roi)[0].cpu()


def load_experts(weights_dir: Path = WEIGHTS) -> tuple[Expert | None, Expert | None]:
    """(global, local) experts from weights_dir; None for a missing file."""
    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    else:
        torch.backends.cudnn.benchmark = True
    found = [weights_dir / f"{name}_expert.pt" for name in ("global", "local")]
    return tuple(Expert(path, device) if path.exists() else None for path in found)
