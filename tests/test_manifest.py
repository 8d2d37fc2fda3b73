"""weights/MANIFEST.json bookkeeping (issue 10 item 13): scores belong to one file's sha256."""

import itertools
import json
import re

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


def _run(run_dir, init: str, steps: int, minutes: float) -> None:
    """A run folder as train.py leaves it: the checkpoint's config and step, its history."""
    run_dir.mkdir()
    torch.save({"config": {"init": init, "threads": 1, "batch": 4}, "step": steps}, run_dir / "ckpt.pt")
    lines = [{"step": s, "loss": 0.5, "samples_per_s": 1.0, "minutes": minutes * s / steps}
             for s in range(10, steps + 1, 10)]
    (run_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_cumulative_counts_every_leg_of_a_resume_lineage(weights, tmp_path):
    """A file exported from leg B, which started from leg A's resume file, which started from
    the shipped file: its cumulative samples hold the shipped file's, A's and B's."""
    _weights(weights / "global_expert.pt", 1.0)
    shipped = manifest.write()["global_expert.pt"]
    shipped["cumulative"] = {"samples": 1000, "cpu_hours": 2.0}
    (weights / "MANIFEST.json").write_text(json.dumps({"global_expert.pt": shipped}))
    _run(tmp_path / "legA", "weights/global_expert.pt", 100, 60.0)
    _run(tmp_path / "legB", "training/resume/legA.pt", 50, 30.0)

    _weights(weights / "global_expert.pt", 2.0)
    item = manifest.write(run_dir=tmp_path / "legB", lineage=(tmp_path / "legA",))["global_expert.pt"]
    assert item["run"]["samples_drawn"] == 200 and item["training_config"]["init"] == "training/resume/legA.pt"
    assert item["cumulative"]["samples"] == 1000 + 400 + 200
    assert item["cumulative"]["cpu_hours"] == 2.0 + 1.0 + 0.5
    behind = item["cumulative"]["initialised_from"]
    assert [leg["run"] for leg in behind["legs"]] == ["legA"]
    assert behind["initialised_from"]["file"] == "weights/global_expert.pt"


def test_legs_whose_run_folders_are_gone_count_from_a_recorded_lineage(weights, tmp_path):
    """runs/ does not survive a machine: the legs before it come from a JSON record, the rest
    from their folders, in order."""
    _weights(weights / "global_expert.pt", 1.0)
    shipped = manifest.write()["global_expert.pt"]
    shipped["cumulative"] = {"samples": 1000, "cpu_hours": 2.0}
    (weights / "MANIFEST.json").write_text(json.dumps({"global_expert.pt": shipped}))
    record = tmp_path / "lineage.json"
    record.write_text(json.dumps({"legs": [
        {"run": "legV", "steps": 10, "init": "weights/global_expert.pt", "samples": 40, "cpu_hours": 0.25},
        {"run": "legW", "steps": 20, "init": "training/resume/legV.pt", "samples": 80, "cpu_hours": 0.5}]}))
    _run(tmp_path / "legA", "training/resume/legW.pt", 100, 60.0)
    _run(tmp_path / "legB", "training/resume/legA.pt", 50, 30.0)

    _weights(weights / "global_expert.pt", 2.0)
    item = manifest.write(run_dir=tmp_path / "legB", lineage=(record, tmp_path / "legA"))["global_expert.pt"]
    behind = item["cumulative"]["initialised_from"]
    assert [leg["run"] for leg in behind["legs"]] == ["legV", "legW", "legA"]
    assert behind["initialised_from"]["file"] == "weights/global_expert.pt"
    assert item["cumulative"]["samples"] == 1000 + 40 + 80 + 400 + 200
    assert item["cumulative"]["cpu_hours"] == pytest.approx(2.0 + 0.25 + 0.5 + 1.0 + 0.5)


def test_the_recorded_lineage_runs_from_the_shipped_file_leg_by_leg():
    """Each recorded leg starts from the leg before it, the first from the shipped weights."""
    legs = json.loads((manifest.ROOT / "training/resume/lineage.json").read_text())["legs"]
    assert legs[0]["init"] == "weights/global_expert.pt"
    for before, leg in itertools.pairwise(legs):
        assert re.search(rf"\b(global_)?{before['run']}[_/]", leg["init"]), (before["run"], leg["init"])
    assert all(leg["samples"] >= 4 * leg["steps"] for leg in legs)


def test_a_soup_lists_the_files_it_averages(weights, tmp_path):
    ingredients = [{"file": "weights/global_expert.pt", "sha256": "a" * 64, "step": 1300},
                   {"file": "runs/legZ14/export.pt", "sha256": "b" * 64, "step": 1200}]
    torch.save({"meta": {"expert": "no_such_run", "patch": 8, "step": 1200, "generator_version": 11,
                         "soup": ingredients}, "model": {"w": torch.ones(2)}, "model_config": {}},
               weights / "global_expert.pt")
    item = manifest.write()["global_expert.pt"]
    assert item["soup_of"] == ingredients and item["steps"] == 1200
    _weights(weights / "global_expert.pt", 3.0)  # a trained file has no such entry
    assert "soup_of" not in manifest.write()["global_expert.pt"]
