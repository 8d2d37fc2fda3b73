"""training.soup: the mean of exported weight files, a narrower file widened with zero weights."""

from __future__ import annotations

import torch

from app.models.unet3d import build_unet
from training import soup

SMALL = {"widths": (8, 16), "groups": 4}


def _export(path, in_channels: int, seed: int, step: int) -> dict:
    torch.manual_seed(seed)
    model = build_unet({"in_channels": in_channels, **SMALL})
    state = {k: v.half() for k, v in model.state_dict().items()}
    meta = {"expert": "global", "patch": 48, "step": step, "generator_version": 11}
    torch.save({"model": state, "model_config": {"in_channels": in_channels, **SMALL}, "meta": meta}, path)
    return state


def test_soup_is_the_mean_and_widens_a_narrower_file(tmp_path):
    old = _export(tmp_path / "old.pt", 7, seed=1, step=100)
    new = _export(tmp_path / "new.pt", 9, seed=2, step=200)
    soup.main([str(tmp_path / "old.pt"), str(tmp_path / "new.pt"), "--out", str(tmp_path / "s" / "global_expert.pt")])
    made = torch.load(tmp_path / "s" / "global_expert.pt", weights_only=False)
    assert made["model_config"]["in_channels"] == 9 and made["meta"]["step"] == 200
    assert [i["step"] for i in made["meta"]["soup"]] == [100, 200]
    key = "stem.conv1.weight"
    mixed = made["model"][key].float()
    assert torch.allclose(mixed[:, :7], (old[key].float() + new[key][:, :7].float()) / 2, atol=1e-3)
    assert torch.allclose(mixed[:, 7:], new[key][:, 7:].float() / 2, atol=1e-3)  # zero weights averaged in
    head = made["model"]["head.weight"].float()
    assert torch.allclose(head, (old["head.weight"].float() + new["head.weight"].float()) / 2, atol=1e-3)
    build_unet(made["model_config"]).load_state_dict({k: v.float() for k, v in made["model"].items()})
