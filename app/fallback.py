"""The prompt-only answer: previous mask, else box cuboid, per class.

Used by the watchdog (deadline or engine failure) to fill the classes the engine did not
finish, and as the whole engine while no learned engine is installed. It needs numpy only,
so it works before (or without) torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from app.state import RunState

if TYPE_CHECKING:
    from app.io import Case


def fallback_labels(case: Case, base: np.ndarray | None = None,
                    skip: frozenset[int] | set[int] = frozenset()) -> np.ndarray:
    """uint8 labels (image shape): `base` kept as is; every class c whose label c + 1 is
    not in `skip` is painted into the voxels where base is 0, from prev_pred == c + 1 when
    the previous mask has that class, else from its box cuboid (z_min..z_max over the 2D
    box), else not at all.

    Box cuboids overlap (organs share bounding boxes), so they are painted largest first and
    each smaller box overwrites the larger ones: a small organ inside a big organ's box stays
    visible, at the cost of a hole in the big cuboid, which is where the big organ is not.
    `base` itself is never changed (it may be the engine's live buffer).
    """
    out = np.zeros(case.image.shape, np.uint8) if base is None else base.copy()
    k = case.num_classes
    wanted = [c for c in range(k) if c + 1 not in skip]
    if not wanted:
        return out

    from_prev = set()
    if case.prev_pred is not None:
        lut = np.zeros(256, np.uint8)
        lut[[c + 1 for c in wanted]] = [c + 1 for c in wanted]
        prev = lut[case.prev_pred]  # labels of skipped or unknown classes -> 0, one pass
        present = set(np.flatnonzero(np.bincount(prev.ravel(), minlength=k + 1)).tolist())
        from_prev = {c for c in wanted if c + 1 in present}
        np.copyto(out, prev, where=out == 0)

    boxed = [c for c in wanted if c not in from_prev and case.prompts[c].box is not None]
    if boxed:
        cuboids = np.zeros_like(out)
        for c in sorted(boxed, key=lambda c: -_volume(case.prompts[c].box.slices())):
            cuboids[case.prompts[c].box.slices()] = c + 1
        np.copyto(out, cuboids, where=out == 0)
    return out


def run(case: Case, state: RunState, deadline: float) -> np.ndarray:
    """The fallback engine: prompts only, no model."""
    return fallback_labels(case)


def _volume(slices: tuple[slice, ...]) -> int:
    return int(np.prod([s.stop - s.start for s in slices]))
