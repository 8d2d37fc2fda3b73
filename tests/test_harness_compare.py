"""harness.compare: the export rule's verdict, its cache keys and the cases of each measure."""

import json

import numpy as np
import pytest

from harness import compare

REFERENCE = {"valset-box@2025": 3.40, "valset-box@7": 3.30, "valset-box@11": 3.35, "valset-nobox": 2.80,
             "brains": 2.50, "aseg": 2.90, "icbm": 3.33, "icbm2x": 3.44}


def held(candidate: dict) -> list[bool]:
    return [ok for _, ok in compare.verdict({**REFERENCE, "paired": 0.0, **candidate}, REFERENCE)]


def test_the_rule_weighs_the_box_seeds_together_and_each_brain_measure_has_a_floor():
    assert held({}) == [True, True, True, True]  # level everywhere: the rule's ">=" lets it through
    assert held({"paired": -0.0001})[0] is False
    assert held({"valset-box@7": 3.25, "valset-box@11": 3.41})[1] is True  # -0.05 on one seed, +0.06 on another
    assert held({"valset-box@2025": 3.39})[1] is False
    assert held({"valset-nobox": 2.791})[2] is True and held({"valset-nobox": 2.789})[2] is False
    assert held({"brains": 2.55, "aseg": 2.91})[3] is True
    assert held({"brains": 2.60, "aseg": 2.87})[3] is False  # mean +0.015, but aseg 0.03 below
    assert held({"brains": 2.48, "aseg": 2.92})[3] is True  # at the floor and level, whatever the float rounding
    assert [ok for _, ok in compare.verdict({**REFERENCE, "paired": 0.0, "icbm2x": None}, REFERENCE)] == [False]
    level = {**REFERENCE, "icbm2x": None}  # the source absent on both sides: left out
    candidate = {**level, "paired": 0.0, "aseg": 2.91, "brains": 2.49}
    assert [ok for _, ok in compare.verdict(candidate, level)] == [True] * 4
    assert [ok for _, ok in compare.verdict({**REFERENCE}, REFERENCE)] == [False]  # no paired number


def test_cached_numbers_belong_to_one_engine_and_one_weights_content(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "global_expert.pt").write_bytes(b"weights")
    assert compare.cache_dir(tmp_path / "cache", a) == compare.cache_dir(tmp_path / "cache", b)
    (b / "global_expert.pt").write_bytes(b"other weights")
    assert compare.cache_dir(tmp_path / "cache", a).parent == compare.cache_dir(tmp_path / "cache", b).parent
    assert compare.cache_dir(tmp_path / "cache", a) != compare.cache_dir(tmp_path / "cache", b)
    engine = compare.cache_dir(tmp_path / "cache", a).parent
    monkeypatch.setenv("SEGFM_CLICK_REFIT", "0")  # a rule switched off: another engine
    assert compare.cache_dir(tmp_path / "cache", a).parent != engine
    with pytest.raises(SystemExit, match="no global_expert.pt"):
        compare.cache_dir(tmp_path / "cache", tmp_path)


def valset(folder):
    gts = np.zeros((4, 8, 8), np.uint8)
    gts[1:3, 2:6, 2:6] = 1
    for name in ("MR_boxed", "CT_free"):
        np.savez_compressed(folder / f"{name}.npz", imgs=gts * 100, gts=gts, spacing=np.ones(3))
    (folder / "tasks.json").write_text(json.dumps({"cases": {"MR_boxed": {"box": True}, "CT_free": {"box": False}}}))


def test_each_measure_takes_the_valset_cases_of_its_mode(tmp_path):
    valset(tmp_path)
    names = {m: [(c.name, box) for c, box in compare.cases_of(m, tmp_path)]
             for m in ("valset-box@7", "valset-nobox", "paired")}
    assert names == {"valset-box@7": [("MR_boxed", True)], "valset-nobox": [("CT_free", False)],
                     "paired": [("CT_free", False), ("MR_boxed", True)]}
    key = compare.data_key(tmp_path)
    (tmp_path / "tasks.json").write_text(json.dumps({"cases": {"MR_boxed": {"box": False}}}))
    assert compare.data_key(tmp_path) != key  # a remade valset: its numbers are measured again
    with pytest.raises(ValueError, match="unknown measure"):
        compare.cases_of("valset_box", tmp_path)


def test_a_measure_is_computed_once_per_weights_and_then_read_from_the_cache(tmp_path, monkeypatch, capsys):
    valset(tmp_path)
    for role in ("ref", "cand"):
        (tmp_path / role).mkdir()
        (tmp_path / role / "global_expert.pt").write_bytes(role.encode())
    calls = []

    def fake_measure(measure, data, experts, reference=None):
        calls.append((measure, experts))
        return {"MR_boxed": [0.5, 3.0 if experts == "cand" else 2.0, 0.7]}

    monkeypatch.setattr(compare, "measure_one", fake_measure)
    monkeypatch.setattr(compare, "load_experts", lambda folder: folder.name)
    argv = ["--candidate", str(tmp_path / "cand"), "--reference", str(tmp_path / "ref"), "--data", str(tmp_path),
            "--cache", str(tmp_path / "cache"), "--only", "valset-box@7"]
    compare.main(argv)
    assert calls == [("valset-box@7", "ref"), ("valset-box@7", "cand")]
    compare.main(argv)
    assert len(calls) == 2
    assert "candidate   3.0000  reference   2.0000" in capsys.readouterr().out
