"""The state an engine shares with the watchdog while it runs (the engine-watchdog contract).

Its own module so that the engine, the fallback and the watchdog can all name it without
importing each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RunState:
    """Shared between the engine thread and the watchdog; touch the fields under `lock`."""

    lock: threading.Lock
    partial: Callable[[], np.ndarray] | None = None  # the engine's current fused uint8 labels
    done: set[int] = field(default_factory=set)  # labels (1..K) the engine has finished
