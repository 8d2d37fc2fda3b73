"""A fake training set in the organisers' layout, for the data-layer tests and `make bench-data`.

    write_fake_dataset(root)  ->  {"good": [rel, ...], "bad": {rel: reason keyword}, "counts": {...}}

`<Modality>/<Dataset>/<Modality>_<Dataset>_<nnn>.npz` (np.savez_compressed), keys imgs (z, y, x),
gts, spacing (x, y, z), sometimes text_prompts. Deliberately uneven: 40 CT, 25 MR, 15 PET,
12 US and 10 Microscopy files (so uniform modality sampling is visible), non-contiguous
label ids, uint16 instance labels (microscopy: up to ~150 cells with ids up to 5000; PET
lesions flagged instance_label=1), images as uint8, int16 (MR) and float32 (PET), plus bad
files: a truncated archive, imgs/gts shapes that differ, no labels, an absurd spacing and an
unknown modality prefix. `scale` multiplies the in-plane size (the bench uses larger cases).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LAYOUT = {  # modality: [(dataset, files, label ids or ("cells", max id), image dtype, instance)]
    "CT": [("AbdFake", 25, [1, 2, 5, 9], "uint8", False), ("LungFake", 15, [3], "uint8", False)],
    "MR": [("BrainFake", 15, [2, 4, 7], "int16", False), ("ProstateFake", 10, [1, 2], "uint8", False)],
    "PET": [("LesionFake", 15, ("lesions", 40), "float32", True)],
    "US": [("HeartFake", 12, [1, 3], "uint8", False)],
    "Microscopy": [("CellsFake", 10, ("cells", 5000), "uint8", True)],
}
BAD = {
    "CT/AbdFake/CT_AbdFake_truncated.npz": "unreadable",
    "MR/BrainFake/MR_BrainFake_mismatch.npz": "shape",
    "US/HeartFake/US_HeartFake_empty.npz": "no labels",
    "PET/LesionFake/PET_LesionFake_spacing.npz": "spacing",
    "XR/ChestFake/XR_ChestFake_000.npz": "modality",
}


def _shape(rng, modality: str, scale: float) -> tuple[int, int, int]:
    hw = int(rng.integers(32, 49) * scale)
    if modality != "Microscopy":
        d = int(rng.integers(12, 25) * (scale ** 0.5))
    else:
        d = int(rng.integers(20, 29) * scale ** 0.5)
    return d, hw, int(hw * rng.uniform(0.8, 1.2))


def _ball(shape, centre, radii) -> tuple[tuple[slice, ...], np.ndarray]:
    lo = [max(int(c - r), 0) for c, r in zip(centre, radii)]
    hi = [min(int(c + r) + 1, n) for c, r, n in zip(centre, radii, shape)]
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    q = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    return tuple(slice(a, b) for a, b in zip(lo, hi)), q <= 1.0


def fake_case(rng: np.random.Generator, modality: str, labels, dtype: str, scale: float = 1.0):
    """(imgs, gts, spacing (x, y, z)) of one fake case."""
    shape = _shape(rng, modality, scale)
    gts = np.zeros(shape, np.uint16 if isinstance(labels, tuple) else np.uint8)
    if isinstance(labels, tuple):  # instances: many small objects, sparse ids
        kind, max_id = labels
        n = int(rng.integers(60, 151)) if kind == "cells" else int(rng.integers(1, 6))
        ids = rng.choice(np.arange(1, max_id + 1), n, replace=False)
        for i in ids:
            centre = rng.uniform(0, 1, 3) * shape
            radii = rng.uniform(1.5, 3.5, 3) if kind == "cells" else rng.uniform(1.5, 5.0, 3)
            sl, ball = _ball(shape, centre, radii)
            gts[sl][ball] = i
    else:
        for i in labels:
            centre = rng.uniform(0.25, 0.75, 3) * shape
            radii = np.maximum(rng.uniform(0.08, 0.25, 3) * shape, 1.5)
            sl, ball = _ball(shape, centre, radii)
            gts[sl][ball] = i
        if not gts.any():
            gts[shape[0] // 2, shape[1] // 2, shape[2] // 2] = labels[0]
    image = rng.normal(60, 15, shape) + 20.0 * (gts > 0) + 3.0 * (gts % 7)
    if dtype == "uint8":
        imgs = np.clip(image, 0, 255).astype(np.uint8)
    elif dtype == "int16":
        imgs = (image * 20 - 300).astype(np.int16)
    else:
        imgs = (image / 50.0).astype(np.float32)
    in_plane = rng.uniform(0.5, 1.5) if modality != "Microscopy" else rng.uniform(0.0003, 0.001)
    spacing = np.array([in_plane, in_plane, in_plane * rng.uniform(1.0, 5.0)])
    return imgs, gts, spacing


def _write(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def write_fake_dataset(root, seed: int = 0, scale: float = 1.0, per_dataset: int | None = None) -> dict:
    """Write the fake training set below root; returns what was written (rel paths)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    good, counts = [], {}
    for modality, datasets in LAYOUT.items():
        for dataset, n, labels, dtype, instance in datasets:
            for i in range(per_dataset or n):
                imgs, gts, spacing = fake_case(rng, modality, labels, dtype, scale)
                rel = f"{modality}/{dataset}/{modality}_{dataset}_{i:03d}.npz"
                extra = {}
                if modality == "PET" or i % 3 == 0:
                    prompts = {"1": f"{dataset} target", "instance_label": int(instance)}
                    extra["text_prompts"] = np.array(prompts, dtype=object)
                _write(root / rel, imgs=imgs, gts=gts, spacing=spacing, **extra)
                good.append(rel)
                counts[modality] = counts.get(modality, 0) + 1
    imgs, gts, spacing = fake_case(rng, "CT", [1], "uint8", scale)
    _write(root / "CT/AbdFake/CT_AbdFake_truncated.npz", imgs=imgs, gts=gts, spacing=spacing)
    path = root / "CT/AbdFake/CT_AbdFake_truncated.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _write(root / "MR/BrainFake/MR_BrainFake_mismatch.npz", imgs=imgs, gts=gts[:, :-1], spacing=spacing)
    _write(root / "US/HeartFake/US_HeartFake_empty.npz", imgs=imgs, gts=np.zeros_like(gts), spacing=spacing)
    _write(root / "PET/LesionFake/PET_LesionFake_spacing.npz", imgs=imgs, gts=gts, spacing=np.array([1.0, 0.0, 1.0]))
    _write(root / "XR/ChestFake/XR_ChestFake_000.npz", imgs=imgs, gts=gts, spacing=spacing)
    return {"good": sorted(good), "bad": dict(BAD), "counts": counts}


if __name__ == "__main__":
    import sys

    print(write_fake_dataset(sys.argv[1])["counts"])
