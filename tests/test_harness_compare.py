"""harness.compare: the export rule's verdict, its cache keys and the cases of each measure."""

import json

import numpy as np
import pytest

from harness import compare


def rows(**auc) -> dict:
    """A measure's per-case rows (DSC it0, DSC_AUC, DSC_Final) from case name -> DSC_AUC."""
    return {name: [0.5, a, 0.7] for name, a in auc.items()}


def reference() -> dict:
    box = {f"valset-box@{s}": rows(CT_a=3.4, MR_b=3.3, PET_c=3.5) for s in compare.SEEDS}
    return {**box, "valset-nobox": rows(CT_v=2.8, Microscopy_n=2.6),
            **{m: rows(case=a) for m, a in zip(compare.BRAIN_MEASURES, (2.50, 2.90, 3.33, 3.44))}}


def held(**changes) -> list[bool]:
    """Which conditions hold for the reference with some cases' DSC_AUC changed ('measure/case')."""
    candidate = {**reference(), "paired": {"x": changes.pop("paired", 0.0)}}
    for key, auc in changes.items():
        measure, case = key.split("/")
        candidate[measure] = {**candidate[measure], case: [0.5, auc, 0.7]}
    return [ok for _, ok in compare.verdict(candidate, reference())]


def every(**auc) -> dict:
    """The same valset box cases changed at every widening seed."""
    return {f"valset-box@{s}/{case}": a for s in compare.SEEDS for case, a in auc.items()}


def test_the_rule_weighs_modalities_by_the_task_mix_with_floors():
    n = 2 + 2 + len(compare.BRAIN_MEASURES)  # paired, weighed, box, no box, each brain measure
    assert held() == [True] * n  # level everywhere: the rule's ">=" lets it through
    assert held(paired=-0.0001)[0] is False
    # CT -0.03 (weight 0.2) against MR +0.01 (weight 0.7, one of five MR measures): 0.7 * 0.002 < 0.006
    assert held(**every(CT_a=3.37, MR_b=3.31))[1] is False
    # the same CT loss against a brain gain: 0.7 * (0.05 / 5) = 0.007 > 0.006
    assert held(**every(CT_a=3.37), **{"aseg/case": 2.95})[1] is True
    assert held(**{"valset-nobox/Microscopy_n": 2.65, "valset-nobox/CT_v": 2.74})[1:4] == [True, True, True]
    assert held(**{"brains/case": 2.48, "aseg/case": 3.0}) == [True] * n  # at the floor, whatever the rounding
    assert held(**{"brains/case": 2.47, "aseg/case": 3.1})[4] is False
    ref = reference()
    assert [ok for _, ok in compare.verdict({**ref, "paired": {"x": 0.0}, "icbm2x": None}, ref)] == [False]
    level = {**ref, "icbm2x": None}  # the source absent on both sides: left out
    assert [ok for _, ok in compare.verdict({**level, "paired": {"x": 0.0}}, level)] == [True] * (n - 1)
    assert [ok for _, ok in compare.verdict(ref, ref)] == [False]  # no paired number


def test_a_floor_is_the_margin_or_the_standard_error_of_the_per_case_differences():
    # every box case 0.03 lower: no spread, so the 0.02 margin is the floor
    assert held(**every(CT_a=3.37, MR_b=3.27, PET_c=3.47))[2] is False
    assert held(**every(CT_a=3.38, MR_b=3.28, PET_c=3.48))[2] is True
    # -0.027 on average, but from cases that disagree (-0.15, +0.05, +0.02): standard error 0.061
    assert held(**every(CT_a=3.25, MR_b=3.35, PET_c=3.52))[2] is True
    assert held(**{"valset-nobox/Microscopy_n": 2.585, "valset-nobox/CT_v": 2.785})[3] is False  # -0.015 each
    assert compare.floor([0.1, -0.1, 0.1, -0.1], 0.02, None) == pytest.approx(-0.2 / np.sqrt(3) / 2)
    assert compare.floor([-0.3], 0.02, 0.1) == -0.1 and compare.floor([-0.3], 0.02, None) == -0.02


def test_a_one_case_brain_measure_takes_the_spread_of_the_measures_with_several_cases():
    ref = {**reference(), "brains": rows(a=2.5, b=2.5, c=2.5, d=2.5)}
    cand = {**ref, "paired": {"x": 0.0}, "brains": rows(a=2.6, b=2.4, c=2.6, d=2.4)}  # per-case SD 0.115
    assert [ok for _, ok in compare.verdict({**cand, "icbm": rows(case=3.23)}, ref)][6] is True
    assert [ok for _, ok in compare.verdict({**cand, "icbm": rows(case=3.21)}, ref)][6] is False


def test_a_modality_without_valset_cases_leaves_the_mix():
    ref = {**reference(), **{f"valset-box@{s}": rows(MR_b=3.3) for s in compare.SEEDS}}
    candidate = {**ref, "paired": {"x": 0.0}, "aseg": rows(case=2.95)}
    assert compare.mix_differences(candidate, ref, list(compare.BRAIN_MEASURES)) == \
        pytest.approx({"MR": 0.01, "Microscopy": 0.0})


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
