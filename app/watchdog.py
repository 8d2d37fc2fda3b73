"""Per-run deadline and the last-resort writer: a slow, hung or broken engine still leaves a file.

Design: a daemon thread in the engine's own process sleeps until the deadline. If the main
thread has not claimed the output by then, the watchdog claims it, builds the best result
available (the engine's partial labels for the classes it finished, `fallback_labels` for the
rest), writes it atomically and ends the process with os._exit(0), abandoning the engine
wherever it is.

Why a thread and not a supervising subprocess: the partial result lives in this process's
memory (no volume copied through a pipe, or through /dev/shm, which Docker caps at 64 MB), and
no second interpreter or case load is paid in each of the up to 6 runs per case. It fires while
the engine hangs in native code as long as that code releases the GIL: torch ops, numpy ufuncs
and BLAS, zlib, sleeps and I/O do, and pure Python loops are preempted every few ms. A native
call that holds the GIL (some scipy.ndimage routines on a full volume) delays the watchdog
until it returns: the engine should run such calls on crops. If nothing has claimed the output
HARD_GRACE_S after the deadline (the GIL never came back), faulthandler's native timer thread,
which needs no GIL, dumps every thread's stack to stderr and ends the process with status 1:
the file is then the prompt-only one the entrypoint wrote before the engine started, and the
run ends instead of hanging the organisers' loop. os._exit skips atexit handlers and CUDA
teardown on purpose: the file is written, nothing else is worth waiting for.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

import numpy as np

from app.fallback import fallback_labels
from app.io import Case, warn
from app.state import RunState

RUN_BUDGET_S = 90.0 / 6  # the challenge allows 90 s x K per case over up to 6 runs
MIN_MARGIN_S = 3.0
MARGIN_FRACTION = 0.1
HARD_GRACE_S = 5.0  # after the deadline, before the native last resort ends a GIL-bound hang


def deadline_seconds(num_classes: int) -> float:
    """Seconds this run may take, counted from interpreter start: 15 s x K minus a margin.

    The margin, max(3 s, 10 %), covers what the organisers time but this clock does not see:
    container start before Python and teardown after it (1-2 s measured with podman), plus
    the final write (about 0.5 s per 80 M voxels) and jitter. Runs that finish early leave
    time to the others (the limit is per case), so this per-run cap is deliberately safe.
    SEGFM_DEADLINE_S overrides it (tests, benchmarks).
    """
    override = os.environ.get("SEGFM_DEADLINE_S")
    if override:
        try:
            seconds = float(override)
            if seconds > 0:
                return seconds
        except ValueError:
            pass
        print(f"app: warning: ignoring SEGFM_DEADLINE_S={override!r} (not a positive number)", file=sys.stderr)
    budget = RUN_BUDGET_S * max(num_classes, 1)
    return budget - max(MIN_MARGIN_S, MARGIN_FRACTION * budget)


def salvage(case: Case, state: RunState, lock_timeout: float = 1.0) -> np.ndarray:
    """The best labels available now: the engine's partial result, with the classes it has
    not finished filled by the fallback. An engine stuck while holding its lock, or a broken
    partial(), costs only the partial result."""
    base, done = None, frozenset()
    if not state.lock.acquire(timeout=lock_timeout):
        warn(case.name, "the engine holds its lock: its partial result is not used")
    else:
        try:
            if state.partial is not None:
                base = np.array(state.partial(), dtype=np.uint8)  # a copy: the engine may go on writing
                done = frozenset(state.done)
        except Exception as e:  # noqa: BLE001 (any failure here only loses the partial result)
            warn(case.name, f"partial result unavailable ({type(e).__name__}: {e})")
        finally:
            state.lock.release()
    if base is not None and base.shape != case.image.shape:
        warn(case.name, f"partial result has shape {base.shape}, not {case.image.shape}: not used")
        base, done = None, frozenset()
    return fallback_labels(case, base, done)


class Watchdog:
    """Arms at construction. Whoever claims the output first writes it: the main thread with
    the engine's result, or the watchdog at the deadline with `fire()`, after which it exits."""

    def __init__(self, deadline: float, fire: Callable[[], None]):
        self.deadline = deadline  # absolute time.monotonic()
        self._fire = fire
        self._claim = threading.Lock()
        self._disarmed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()
        faulthandler.dump_traceback_later(  # the real fd 2: sys.stderr may be a Python-level wrapper
            max(deadline - time.monotonic(), 0.0) + HARD_GRACE_S, exit=True, file=sys.__stderr__)

    def claim(self) -> bool:
        """Take the output for the main thread and disarm. False when the watchdog got it
        first: it is writing and ends the process, so call `join()` next."""
        if not self._claim.acquire(blocking=False):
            return False
        faulthandler.cancel_dump_traceback_later()
        self._disarmed.set()
        return True

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        if self._disarmed.wait(max(0.0, self.deadline - time.monotonic())):
            return
        if not self._claim.acquire(blocking=False):
            return  # the main thread is writing the engine's result
        faulthandler.cancel_dump_traceback_later()  # writing the fallback may take its time
        code = 0
        try:
            self._fire()
        except Exception:  # noqa: BLE001 (report, then still end the run)
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
