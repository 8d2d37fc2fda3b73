"""`python -m app`: predict every case in INPUT_DIR into OUTPUT_DIR (the container entrypoint).

Order matters: the clock starts at interpreter start, the case is read with numpy only, the
prompt-only provisional file and the watchdog are started, and only then is the engine (and
with it torch) imported; the engine runs once the provisional file is in place. So a slow
import, a crash or a hung engine still ends in a valid output file. Several input files (the
challenge gives one) each get a run of their own, `python -m app FILE`, since the watchdog ends
its process. Exit status: 0 whenever every case got the best file it could (bad cases
included: the organisers need a file, not a status); nonzero only when there is nothing to
read or nowhere to write.
"""

import time

START = time.monotonic()  # first: the deadline counts from interpreter start

import importlib
import os
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app import fallback
from app.io import Case, CaseError, load_case, remove_stale_temps, write_segs
from app.state import RunState
from app.watchdog import Watchdog, deadline_seconds, salvage

DEFAULT_ENGINE = "app.engine:run"
Engine = Callable[[Case, RunState, float], np.ndarray]


def main(argv: list[str] | None = None) -> int:
    """Every .npz in INPUT_DIR, or only `argv[0]` (the run of one of several files)."""
    in_dir = Path(os.environ.get("INPUT_DIR", "/workspace/inputs"))
    out_dir = Path(os.environ.get("OUTPUT_DIR", "/workspace/outputs"))
    files = [Path(argv[0])] if argv else sorted(in_dir.glob("*.npz")) if in_dir.is_dir() else []
    if not files:
        log(f"error: no .npz file in INPUT_DIR {in_dir}")
        return 2
    problem = _unwritable(out_dir)
    if problem:
        log(f"error: cannot write to OUTPUT_DIR {out_dir}: {problem}")
        return 3
    if len(files) > 1:
        log(f"warning: {len(files)} input files (the challenge gives one): one run per file, "
            "each with its own deadline")
        for path in files:
            _run_alone(path)
        return 0
    predict(files[0], out_dir / files[0].name, START)
    return 0


def _run_alone(path: Path) -> None:
    """`python -m app FILE` in a process of its own: the watchdog ends its process at the
    deadline, so in one process a hung engine would cost every file after it."""
    status = subprocess.run([sys.executable, "-m", "app", str(path)], check=False).returncode
    if status != 0:
        log(f"{path.name}: its run ended with status {status}")


def predict(path: Path, out: Path, start: float) -> None:
    """One case: engine result if it finishes in time, else partial result + fallback."""
    remove_stale_temps(out)
    try:
        case = load_case(path)
    except CaseError as e:
        log(f"error: {e}")
        if e.shape is not None:
            write_segs(out, np.zeros(e.shape, np.uint8))
            log(f"{path.name}: wrote all-zero segs {e.shape} -> {out}")
        return
    k = case.num_classes
    if k == 0:
        write_segs(out, np.zeros(case.image.shape, np.uint8))
        log(f"{case.name}: no boxes and no clicks: wrote all-zero segs -> {out}")
        return

    seconds = deadline_seconds(k)
    log(f"{case.name}: K={k} iteration={case.iteration} shape={case.image.shape} deadline={seconds:.1f}s")
    state = RunState(threading.Lock())
    provisional = _write_provisional(case, out)

    def at_deadline() -> None:
        provisional.join()
        write_segs(out, salvage(case, state))
        _summary(case, "deadline reached: partial result + fallback", start, out)

    watchdog = Watchdog(start + seconds, at_deadline)
    name, engine = _load_engine(os.environ.get("SEGFM_ENGINE", DEFAULT_ENGINE))
    provisional.join()  # in place before the engine runs: one that never gives the GIL back still leaves it
    try:
        labels, how = _checked(engine(case, state, start + seconds), k, case.image.shape), name
    except BaseException as e:  # noqa: BLE001 (SystemExit, KeyboardInterrupt too: the file comes first)
        traceback.print_exc()
        log(f"{case.name}: engine {name} failed ({type(e).__name__}: {e}): partial result + fallback")
        labels, how = salvage(case, state), f"{name} failed -> fallback"
    if not watchdog.claim():
        watchdog.join()  # the watchdog is writing; it ends the process
    write_segs(out, labels)
    _summary(case, how, start, out)


def _write_provisional(case: Case, out: Path) -> threading.Thread:
    """Write the prompt-only answer at once, in the background while torch imports.

    A crash that no Python code survives (a segfault, the OOM killer, an engine holding the GIL
    past the native last resort) then still leaves this run's own file instead of a stale one.
    zlib releases the GIL, so the write overlaps the import; the engine starts only after it,
    and the watchdog joins it before writing, so the provisional file never lands last.
    """

    def write() -> None:
        try:
            write_segs(out, fallback.fallback_labels(case))
        except Exception as e:  # noqa: BLE001 (the final write will still be tried)
            log(f"{case.name}: provisional write failed ({type(e).__name__}: {e})")

    thread = threading.Thread(target=write, name="provisional-write", daemon=True)
    thread.start()
    return thread


def log(message: str) -> None:
    print(f"app: {message}", file=sys.stderr, flush=True)


def _unwritable(out_dir: Path) -> str | None:
    """Why OUTPUT_DIR cannot take a file (probed by writing one: root ignores permission bits,
    a read-only mount does not), or None."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None


def _load_engine(spec: str) -> tuple[str, Engine]:
    """'module:function' -> the engine; the fallback engine when it cannot be imported."""
    module, _, function = spec.partition(":")
    try:
        return spec, getattr(importlib.import_module(module), function or "run")
    except BaseException as e:  # noqa: BLE001 (a missing or broken engine must not cost the output)
        log(f"engine {spec} unavailable ({type(e).__name__}: {e}): using the fallback engine")
        return "fallback", fallback.run


def _checked(labels: np.ndarray, k: int, shape: tuple[int, ...]) -> np.ndarray:
    """The engine's result, or ValueError: a wrong shape would abort the whole submission's scoring."""
    labels = np.asarray(labels)
    if labels.shape != shape:
        raise ValueError(f"engine returned shape {labels.shape}, expected {shape}")
    if labels.dtype.kind not in "biu":
        raise ValueError(f"engine returned dtype {labels.dtype}, expected uint8")
    if labels.size and (labels.min() < 0 or labels.max() > k):
        raise ValueError(f"engine returned labels {labels.min()}..{labels.max()}, expected 0..{k}")
    return labels.astype(np.uint8, copy=False)


def _summary(case: Case, how: str, start: float, out: Path) -> None:
    log(f"{case.name}: K={case.num_classes} iteration={case.iteration} engine={how} "
        f"{time.monotonic() - start:.1f}s -> {out}")


if __name__ == "__main__":
    status = main(sys.argv[1:])
    # Every file is written and closed. Skip interpreter teardown: a native thread pool torn
    # down at exit once aborted a finished run ("terminate called without an active exception",
    # status -6, seen 1 in ~500 harness runs), and the organisers' loop should see a clean exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
