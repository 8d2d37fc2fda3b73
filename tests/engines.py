"""Engines for the entrypoint and watchdog tests (SEGFM_ENGINE=tests.engines:<name>).

The partial result of `sleep_forever` and `partial_then_fail` has class 1 finished as the
cube [0:2, 0:2, 0:2], so a test can tell the engine's partial labels from the fallback."""

import time

import numpy as np


def _publish_class_1(case, state) -> None:
    labels = np.zeros(case.image.shape, np.uint8)
    labels[:2, :2, :2] = 1
    with state.lock:
        state.partial = lambda: labels
        state.done.add(1)


def sleep_forever(case, state, deadline):
    _publish_class_1(case, state)
    time.sleep(3600)


def matmul_forever(case, state, deadline):
    """Hangs in native code (BLAS, which releases the GIL), never in Python."""
    _publish_class_1(case, state)
    a = np.ones((1500, 1500))
    while True:
        a = a @ a / 1500


def fail(case, state, deadline):
    raise RuntimeError("engine exploded")


def partial_then_fail(case, state, deadline):
    _publish_class_1(case, state)
    raise RuntimeError("engine exploded after class 1")


def wrong_shape(case, state, deadline):
    return np.zeros((2, 2, 2), np.uint8)


def all_ones(case, state, deadline):
    return np.ones(case.image.shape, np.int64)


def gil_hang(case, state, deadline):
    """Holds the GIL in C from its first instruction (catastrophic regex backtracking): neither
    the watchdog nor a background writer can run from here on."""
    import re

    re.match(r"(a+)+$", "a" * 40 + "b")


def exits(case, state, deadline):
    _publish_class_1(case, state)
    raise SystemExit(3)


def interrupted(case, state, deadline):
    _publish_class_1(case, state)
    raise KeyboardInterrupt


def killed(case, state, deadline):
    """Dies like an engine taken by the OOM killer: no Python code runs after this."""
    import os
    import signal

    time.sleep(1)
    os.kill(os.getpid(), signal.SIGKILL)
