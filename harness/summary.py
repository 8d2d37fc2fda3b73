"""One-line summary of a prediction file, for `make predict`:
`python -m harness.summary OUT.npz [--input IN.npz] [--seconds S]`."""

import argparse

import numpy as np


def summarise(out_path: str, input_path: str | None = None, seconds: float | None = None) -> str:
    segs = np.load(out_path)["segs"]
    counts = np.bincount(segs.ravel(), minlength=1)
    labels = ", ".join(f"{label}: {n}" for label, n in enumerate(counts) if label and n) or "none"
    parts = [f"{out_path}: segs {segs.dtype} {segs.shape}", f"labels {{{labels}}}"]
    if input_path:
        shape = np.load(input_path, allow_pickle=True)["imgs"].shape
        parts.append("shape matches imgs" if shape == segs.shape else f"SHAPE MISMATCH: imgs {shape}")
    if seconds is not None:
        parts.append(f"wall {seconds:.1f} s")
    return " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output")
    parser.add_argument("--input")
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args()
    print(summarise(args.output, args.input, args.seconds))


if __name__ == "__main__":
    main()
