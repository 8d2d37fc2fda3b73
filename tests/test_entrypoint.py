"""`python -m app` end to end: iteration kinds, bad inputs, exit codes, engine failure and
the watchdog against hanging engines (subprocesses, since the watchdog ends its process)."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import app.__main__ as entry
from app.fallback import fallback_labels
from app.io import load_case
from tests.npzcase import AMOS, REPO, SHAPE, box, objects, write

DATA = REPO / "tests/data"
BOXES = objects([box(z=(0, 7), y=(0, 15), x=(0, 11)), box(z=(3, 5), y=(6, 9), x=(5, 8))])


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Empty INPUT_DIR / OUTPUT_DIR, the env set for an in-process `main()`."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    monkeypatch.setenv("INPUT_DIR", str(in_dir))
    monkeypatch.setenv("OUTPUT_DIR", str(out_dir))
    monkeypatch.setenv("SEGFM_ENGINE", "app.fallback:run")
    monkeypatch.setenv("SEGFM_DEADLINE_S", "600")  # in process the watchdog must never fire
    return in_dir, out_dir


def segs(path) -> np.ndarray:
    with np.load(path) as npz:
        assert npz.files == ["segs"]
        return npz["segs"]


@pytest.mark.parametrize("fixture", ["inputs/MR_ICBM152_tissue.npz", "inputs_iter/MR_ICBM152_tissue.npz"])
def test_fixture_iterations_with_fallback_engine(dirs, fixture):
    """Box iteration 0 (box cuboids) and click iteration 1 with boxes (prev_pred kept)."""
    in_dir, out_dir = dirs
    (in_dir / "MR_ICBM152_tissue.npz").write_bytes((DATA / fixture).read_bytes())
    assert entry.main() == 0
    out = segs(out_dir / "MR_ICBM152_tissue.npz")
    case = load_case(DATA / fixture)
    assert out.dtype == np.uint8 and out.shape == case.image.shape
    np.testing.assert_array_equal(out, fallback_labels(case))
    assert set(np.unique(out)) == {0, 1, 2, 3}
    if case.prev_pred is not None:
        np.testing.assert_array_equal(out, case.prev_pred)


def test_no_box_first_run(dirs):
    in_dir, out_dir = dirs
    write(in_dir / "n.npz", clicks=objects([{"fg": [[1, 1, 1]], "bg": []}]), clicks_order=np.array([["fg"]]),
          prev_pred=np.zeros(SHAPE, np.uint8))
    assert entry.main() == 0
    out = segs(out_dir / "n.npz")
    assert out.shape == SHAPE and not out.any()  # the fallback has nothing to paint without box or mask


def test_hundred_classes(dirs):
    in_dir, out_dir = dirs
    k, shape = 100, (2, 20, 50)
    boxes = objects([box(z=(0, 1), y=(c // 25 * 5, c // 25 * 5 + 4), x=(c % 25 * 2, c % 25 * 2 + 1))
                     for c in range(k)])
    write(in_dir / "k.npz", imgs=np.zeros(shape, np.uint8), boxes=boxes)
    assert entry.main() == 0
    assert set(np.unique(segs(out_dir / "k.npz"))) == set(range(1, k + 1))


@pytest.mark.skipif(not AMOS.exists(), reason="real challenge sample not present (../shared)")
def test_real_amos_sample(dirs):
    in_dir, out_dir = dirs
    (in_dir / AMOS.name).symlink_to(AMOS)
    assert entry.main() == 0
    out = segs(out_dir / AMOS.name)
    assert out.shape == (63, 512, 512) and set(np.unique(out)) == set(range(16))


def test_missing_engine_falls_back(dirs, monkeypatch, capsys):
    in_dir, out_dir = dirs
    monkeypatch.setenv("SEGFM_ENGINE", "app.no_such_engine:run")
    write(in_dir / "a.npz", boxes=BOXES)
    assert entry.main() == 0
    assert "using the fallback engine" in capsys.readouterr().err
    np.testing.assert_array_equal(segs(out_dir / "a.npz"), fallback_labels(load_case(in_dir / "a.npz")))


@pytest.mark.parametrize("engine", ["fail", "wrong_shape"])
def test_engine_failure_writes_fallback(dirs, monkeypatch, capsys, engine):
    in_dir, out_dir = dirs
    monkeypatch.setenv("SEGFM_ENGINE", f"tests.engines:{engine}")
    write(in_dir / "a.npz", boxes=BOXES)
    assert entry.main() == 0
    assert f"engine tests.engines:{engine} failed" in capsys.readouterr().err
    np.testing.assert_array_equal(segs(out_dir / "a.npz"), fallback_labels(load_case(in_dir / "a.npz")))


def test_engine_failure_keeps_finished_classes(dirs, monkeypatch):
    in_dir, out_dir = dirs
    monkeypatch.setenv("SEGFM_ENGINE", "tests.engines:partial_then_fail")
    write(in_dir / "a.npz", boxes=BOXES)
    assert entry.main() == 0
    _assert_partial_plus_fallback(segs(out_dir / "a.npz"))


def test_engine_result_is_cast_to_uint8(dirs, monkeypatch):
    in_dir, out_dir = dirs
    monkeypatch.setenv("SEGFM_ENGINE", "tests.engines:all_ones")
    write(in_dir / "a.npz", boxes=BOXES)
    assert entry.main() == 0
    assert (segs(out_dir / "a.npz") == 1).all()


def test_bad_cases_still_get_a_file_when_the_shape_is_known(dirs, capfd):
    in_dir, out_dir = dirs
    write(in_dir / "text.npz", imgs=np.full(SHAPE, "a"), boxes=BOXES)
    write(in_dir / "empty.npz")  # no boxes, no clicks: K = 0
    write(in_dir / "flat.npz", imgs=np.zeros(SHAPE[1:], np.uint8))
    (in_dir / "corrupt.npz").write_bytes(b"garbage")
    assert entry.main() == 0
    err = capfd.readouterr().err  # one run per file: the runs' stderr is the file descriptor's
    assert "4 input files" in err and "'imgs' dtype <U1 is not numeric" in err and "not a readable npz" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["empty.npz", "text.npz"]
    assert segs(out_dir / "text.npz").shape == SHAPE and not segs(out_dir / "text.npz").any()
    assert segs(out_dir / "empty.npz").shape == SHAPE and not segs(out_dir / "empty.npz").any()


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_non_uint8_image_is_converted_and_segmented(dirs, capsys, dtype):
    """Issue 10 item 8: a float or int16 image is converted (one warning), not zeroed."""
    in_dir, out_dir = dirs
    write(in_dir / "a.npz", imgs=(np.arange(np.prod(SHAPE)).reshape(SHAPE) * 3.5 - 100).astype(dtype), boxes=BOXES)
    assert entry.main() == 0
    assert capsys.readouterr().err.count("'imgs' is") == 1
    _assert_fallback_only(segs(out_dir / "a.npz"))


def test_more_than_255_classes_gets_zeros_at_once(dirs, monkeypatch, capsys):
    """Issue 10 item 3: labels above 255 do not fit the uint8 output: one error line, zeros,
    before any engine work."""
    in_dir, out_dir = dirs
    monkeypatch.setenv("SEGFM_ENGINE", "tests.engines:fail")  # must never be reached
    write(in_dir / "k.npz", boxes=objects([box()] * 256))
    started = time.monotonic()
    assert entry.main() == 0
    assert time.monotonic() - started < 1.0
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "256 classes" in err and "failed" not in err
    assert segs(out_dir / "k.npz").shape == SHAPE and not segs(out_dir / "k.npz").any()


@pytest.mark.parametrize("engine", ["exits", "interrupted"])
def test_engine_exit_or_interrupt_still_writes(dirs, monkeypatch, capsys, engine):
    """Issue 10 item 4: SystemExit or KeyboardInterrupt from the engine is salvaged like an
    exception (class 1 kept from the partial result), and no temp file is left."""
    in_dir, out_dir = dirs
    monkeypatch.setenv("SEGFM_ENGINE", f"tests.engines:{engine}")
    write(in_dir / "a.npz", boxes=BOXES)
    assert entry.main() == 0
    assert f"engine tests.engines:{engine} failed" in capsys.readouterr().err
    _assert_partial_plus_fallback(segs(out_dir / "a.npz"))
    assert [p.name for p in out_dir.iterdir()] == ["a.npz"]


def test_temp_files_of_a_killed_run_are_removed(dirs):
    """A run killed mid-write (SIGKILL) leaves its temp file; the next run of that case removes it."""
    in_dir, out_dir = dirs
    write(in_dir / "a.npz", boxes=BOXES)
    out_dir.mkdir()
    (out_dir / ".a.npz.12345.tmp").write_bytes(b"half")
    (out_dir / ".b.npz.12345.tmp").write_bytes(b"another case's")
    assert entry.main() == 0
    assert sorted(p.name for p in out_dir.iterdir()) == [".b.npz.12345.tmp", "a.npz"]


def test_empty_or_missing_input_folder_fails(dirs, monkeypatch, capsys):
    in_dir, _ = dirs
    assert entry.main() == 2
    monkeypatch.setenv("INPUT_DIR", str(in_dir / "absent"))
    assert entry.main() == 2
    assert capsys.readouterr().err.count("no .npz file in INPUT_DIR") == 2


def test_unwritable_output_folder_fails(dirs, monkeypatch, capsys):
    in_dir, out_dir = dirs
    write(in_dir / "a.npz", boxes=BOXES)
    blocker = out_dir.parent / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("OUTPUT_DIR", str(blocker / "out"))  # a folder under a regular file
    assert entry.main() == 3
    assert "cannot write to OUTPUT_DIR" in capsys.readouterr().err


def _assert_partial_plus_fallback(out):
    """tests.engines published class 1 = cube [0:2]^3 as finished; class 2 comes from its box."""
    assert out.shape == SHAPE and out.dtype == np.uint8
    assert (out[:2, :2, :2] == 1).all() and (out == 1).sum() == 8  # class 1's box is not painted
    assert (out[3:6, 6:10, 5:9] == 2).all() and (out == 2).sum() == 48


def _run_app(in_dir, out_dir, engine, deadline_s, command=(sys.executable, "-m", "app")):
    env = {**os.environ, "INPUT_DIR": str(in_dir), "OUTPUT_DIR": str(out_dir), "SEGFM_ENGINE": engine,
           "SEGFM_DEADLINE_S": str(deadline_s), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"}
    started = time.monotonic()
    result = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


@pytest.mark.parametrize("engine", ["sleep_forever", "matmul_forever"])
def test_watchdog_beats_a_hanging_engine(tmp_path, engine):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    write(in_dir / "a.npz", boxes=BOXES)
    result, seconds = _run_app(in_dir, out_dir, f"tests.engines:{engine}", deadline_s=2)
    assert result.returncode == 0, result.stderr
    assert "deadline reached" in result.stderr
    assert seconds < 2 + 3  # deadline + interpreter start and exit on a busy 2-core machine
    _assert_partial_plus_fallback(segs(out_dir / "a.npz"))


def test_native_last_resort_ends_a_gil_bound_hang(tmp_path):
    """Nothing can be written without the GIL, but the run must still end (status 1, stacks on
    stderr), and the provisional prompt-only file is there although the engine took the GIL
    from its first instruction (issue 10 item 5)."""
    from app.watchdog import HARD_GRACE_S

    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    write(in_dir / "a.npz", boxes=BOXES)
    result, seconds = _run_app(in_dir, out_dir, "tests.engines:gil_hang", deadline_s=1.5)
    assert result.returncode == 1 and "Timeout" in result.stderr and "gil_hang" in result.stderr
    assert seconds < 1.5 + HARD_GRACE_S + 3
    _assert_fallback_only(segs(out_dir / "a.npz"))


def test_a_killed_engine_leaves_the_provisional_file(tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    write(in_dir / "a.npz", boxes=BOXES)
    result, _ = _run_app(in_dir, out_dir, "tests.engines:killed", deadline_s=30)
    assert result.returncode == -9
    _assert_fallback_only(segs(out_dir / "a.npz"))


def test_each_file_gets_its_own_run(tmp_path):
    """Issue 10 item 6: the watchdog ends its process, so a hanging engine on the first file
    must not cost the second: each gets its own run and deadline."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    write(in_dir / "a.npz", boxes=BOXES)
    write(in_dir / "b.npz", boxes=BOXES)
    result, seconds = _run_app(in_dir, out_dir, "tests.engines:sleep_forever", deadline_s=1.5)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("deadline reached") == 2
    assert seconds < 2 * (1.5 + 3)
    _assert_partial_plus_fallback(segs(out_dir / "a.npz"))
    _assert_partial_plus_fallback(segs(out_dir / "b.npz"))


def _assert_fallback_only(out):
    """Box cuboids only: class 2's small box painted over class 1's whole-image box."""
    assert out.shape == SHAPE and out.dtype == np.uint8
    assert (out[3:6, 6:10, 5:9] == 2).all() and (out == 2).sum() == 48 and (out == 1).sum() == out.size - 48


def test_predict_sh(tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    write(in_dir / "a.npz", boxes=BOXES)
    result, _ = _run_app(in_dir, out_dir, "app.fallback:run", deadline_s=60, command=("sh", str(REPO / "predict.sh")))
    assert result.returncode == 0, result.stderr
    assert segs(out_dir / "a.npz").shape == SHAPE
