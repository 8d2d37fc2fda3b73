"""A compact residual 3D U-Net: one definition shared by training and inference.

Small on purpose (2,589,185 parameters, about 2.59M, at the default config of nine input
channels; the shipped file has seven, 896 parameters fewer, and loads with zero weights for the
rest): it must train on two CPU cores and answer within the 90 s per class budget on a CPU-only
machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 9          # image, box, +clicks, -clicks, previous mask, others' boxes and masks,
                                  # containers' and contents' boxes (app.prompts.CHANNELS)
    widths: tuple[int, ...] = (16, 32, 64, 128)  # features per stage; stage i runs at 1/2**i resolution
    blocks_per_stage: int = 1     # residual blocks per encoder stage (after the stride-2 entry conv)
    groups: int = 8               # GroupNorm groups: batch-size independent, fine for batch 1..4


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


class ResidualBlock(nn.Module):
    """conv-norm-act-conv-norm plus a (projected) skip, as in nnU-Net's residual encoder."""

    def __init__(self, cin: int, cout: int, groups: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(cout, groups)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(cout, groups)
        self.skip = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), _norm(cout, groups))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        y = self.norm2(self.conv2(y))
        return F.leaky_relu(y + self.skip(x), 0.01)


class UNet3D(nn.Module):
    """Residual encoder, light decoder (one residual block per stage), one logit out.

    Input (B, in_channels, D, H, W) with D, H, W divisible by 2**(len(widths)-1);
    output (B, 1, D, H, W) logits of the prompted class.
    """

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        assert len(config.widths) >= 2, f"need at least two stages, got {config.widths}"
        self.config = config
        w, g = config.widths, config.groups
        self.stem = ResidualBlock(config.in_channels, w[0], g)
        self.down = nn.ModuleList()
        for cin, cout in pairwise(w):
            blocks = [ResidualBlock(cin, cout, g, stride=2)]
            blocks += [ResidualBlock(cout, cout, g) for _ in range(config.blocks_per_stage)]
            self.down.append(nn.Sequential(*blocks))
        self.up = nn.ModuleList(nn.ConvTranspose3d(cout, cin, 2, stride=2) for cin, cout in pairwise(w))
        self.fuse = nn.ModuleList(ResidualBlock(2 * cin, cin, g) for cin in w[:-1])
        self.head = nn.Conv3d(w[0], 1, 1)

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.config.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert all(s % self.divisor == 0 for s in x.shape[2:]), \
            f"spatial {tuple(x.shape[2:])} not divisible by {self.divisor}"
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        y = skips.pop()
        for up, fuse in zip(reversed(self.up), reversed(self.fuse)):
            y = fuse(torch.cat([up(y), skips.pop()], dim=1))
        return self.head(y)


def build_unet(config: UNetConfig | dict | None = None) -> UNet3D:
    """Builds the network from a config or the dict stored in a checkpoint."""
    if isinstance(config, dict):
        config = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return UNet3D(config or UNetConfig())


def load_weights(model: UNet3D, state: dict) -> None:
    """Loads a state dict into `model`, widening a file made for fewer input channels (before the
    other classes' channels, or the containers' and contents'): the new channels get zero
    weights, so it computes what it did."""
    state = {k: v.float() for k, v in state.items()}
    own = model.state_dict()
    for key in ("stem.conv1.weight", "stem.skip.0.weight"):
        have, want = state[key], own[key].shape[1]
        if have.shape[1] < want:
            state[key] = torch.cat([have, have.new_zeros(have.shape[0], want - have.shape[1], *have.shape[2:])], 1)
    model.load_state_dict(state)


def config_dict(model: UNet3D) -> dict:
    return asdict(model.config)
