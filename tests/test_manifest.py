"""weights/MANIFEST.json bookkeeping (issue 10 item 13): scores belong to one file's sha256."""

import json

import pytest
import torch

from training import manifest


def _weights(path, value: float) -> None:
    """A minimal exported weights file (the keys training.manifest.entry reads)."""
    torch.save({"meta": {"expert": "no_such_run", "patch": 8, "step": 1, "generator_version": 2},
                "model": {"w": torch.full((2,), value)}, "model_config": {}}, path)


@pytest.fixture
def weights(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "WEIGHTS", tmp_path)
    monkeypatch.setattr(manifest, "MANIFEST", tmp_path / "MANIFEST.json")
    return tmp_path


def test_scores_stay_with_an_unchanged_file_and_go_with_a_changed_one(weights):
    _weights(weights / "global_expert.pt", 1.0)
    scores = {"DSC_AUC": 2.5}
    assert manifest.write(scores)["global_expert.pt"]["harness_scores"] == scores
    assert manifest.write()["global_expert.pt"]["harness_scores"] == scores  # same file: kept

    item = json.loads((weights / "MANIFEST.json").read_text())["global_expert.pt"]
    item["training_config"] = {"seed": 7}  # provenance written when the file was made
    (weights / "MANIFEST.json").write_text(json.dumps({"global_expert.pt": item}))
    assert manifest.write(scores)["global_expert.pt"]["training_config"] == {"seed": 7}  # runs/ is not consulted

    _weights(weights / "global_expert.pt", 2.0)  # retrained: other weights, same name
    item = manifest.write()["global_expert.pt"]
    assert item["harness_scores"] is None and item["sha256"] == manifest.sha256(weights / "global_expert.pt")
    assert json.loads((weights / "MANIFEST.json").read_text())["global_expert.pt"]["harness_scores"] is None
