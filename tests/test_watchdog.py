"""Deadline arithmetic, salvage of the engine's partial result, and the claim protocol.
The watchdog firing itself ends the process, so it is tested end to end in test_entrypoint."""

import threading
import time

import numpy as np
import pytest

from app.io import Box, Case, ClassPrompts
from app.state import RunState
from app.watchdog import Watchdog, deadline_seconds, salvage

SHAPE = (4, 8, 8)


@pytest.fixture
def case() -> Case:
    boxes = [Box(0, 3, 1, 0, 7, 0, 7), Box(1, 2, 1, 2, 3, 2, 3)]
    prompts = [ClassPrompts(box=b, fg=[], bg=[], order=[]) for b in boxes]
    return Case(name="w.npz", image=np.zeros(SHAPE, np.uint8), spacing=np.ones(3), prompts=prompts,
                prev_pred=None, iteration=0, has_boxes=True)


@pytest.mark.parametrize(("k", "seconds"), [(0, 12.0), (1, 12.0), (6, 81.0), (15, 202.5), (100, 1350.0)])
def test_default_deadline(monkeypatch, k, seconds):
    monkeypatch.delenv("SEGFM_DEADLINE_S", raising=False)
    assert deadline_seconds(k) == pytest.approx(seconds)


def test_deadline_override(monkeypatch, capsys):
    monkeypatch.setenv("SEGFM_DEADLINE_S", "2.5")
    assert deadline_seconds(15) == 2.5
    monkeypatch.setenv("SEGFM_DEADLINE_S", "soon")
    assert deadline_seconds(1) == 12.0
    assert "SEGFM_DEADLINE_S" in capsys.readouterr().err


def test_salvage_keeps_finished_classes(case):
    labels = np.zeros(SHAPE, np.uint8)
    labels[0, 0, 0] = 2
    state = RunState(threading.Lock(), partial=lambda: labels, done={2})
    out = salvage(case, state)
    assert out[0, 0, 0] == 2 and (out == 2).sum() == 1  # class 2 finished: its box is not painted
    assert (out == 1).sum() == out.size - 1  # class 1 unfinished: box fallback


def test_salvage_without_partial_uses_fallback_only(case):
    state = RunState(threading.Lock(), done={1, 2})  # done without a partial result means nothing
    out = salvage(case, state)
    assert (out == 2).sum() == 8 and (out == 1).sum() == out.size - 8


def test_salvage_when_engine_holds_its_lock(case, capsys):
    state = RunState(threading.Lock(), partial=lambda: np.ones(SHAPE, np.uint8), done={1, 2})
    state.lock.acquire()
    out = salvage(case, state, lock_timeout=0.05)
    assert (out == 2).sum() == 8
    assert "holds its lock" in capsys.readouterr().err


@pytest.mark.parametrize("partial", [lambda: np.zeros((2, 2, 2), np.uint8), lambda: 1 / 0])
def test_salvage_with_broken_partial(case, capsys, partial):
    out = salvage(case, RunState(threading.Lock(), partial=partial, done={1, 2}))
    assert (out == 2).sum() == 8
    assert "partial result" in capsys.readouterr().err


def test_claim_disarms_the_watchdog():
    fired = threading.Event()
    watchdog = Watchdog(time.monotonic() + 0.2, fired.set)
    assert watchdog.claim()
    watchdog.join()
    assert not fired.is_set()
    assert not watchdog.claim()  # the output is already taken


def test_app_has_no_import_cycle():
    """Every module of app/ imports (at module level, TYPE_CHECKING included) none that imports it back."""
    import ast
    from pathlib import Path

    app = Path(__file__).parents[1] / "app"
    graph = {}
    for path in app.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app."):
                names.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("app.")}
        graph[path.stem] = names & {p.stem for p in app.glob("*.py")}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph[start])

    assert [m for m in graph if reaches(m, m)] == []
