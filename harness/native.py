"""The validation set's two downsampled CT cases at the sources' native in-plane resolution,
through the official loop (boxes, 5 clicks) with the engine in-process.

    python -m harness.native

Why: the challenge's CTs come at native resolution (512 x 512 in-plane), while the validation
set (harness.valset) halves lung1 and AMOS in-plane to keep its runs short. The engine can
behave differently at twice the voxels per object: at native resolution AMOS's lung bases got
the soft tissue between them at iteration 0 (DSC 0.001 against 0.944 halved), which the box
check let pass because that tissue spans their box. Same labelling rules as harness.valset
(chest_ct, abdomen_ct); a case whose source in ../shared/samples is absent is skipped.
"""

from __future__ import annotations

import argparse

from harness import valset
from harness.loop import LabelledCase, print_engine_scores

SOURCES = {"lung1": "CT_PyRadiomics_lung1", "amos": "CT_AMOS_amos_0018"}


def native_case(key: str) -> LabelledCase | None:
    """CT_native_lung1 (body, lungs, bone, the real lesion) or CT_native_amos (body, bone, lung
    bases), labelled as their halved validation-set versions; None when the source is absent."""
    path = valset.find_source(SOURCES[key])
    if path is None:
        return None
    d = valset.load_npz(path)
    if key == "lung1":
        case = valset.chest_ct("CT_native_lung1", d["imgs"], d["gts"] > 0, d["spacing"], path.name)
    else:
        case = valset.abdomen_ct("CT_native_amos", d["imgs"], d["spacing"], path.name)
    return LabelledCase(case.name, case.imgs, case.gts, case.spacing)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=sorted(SOURCES), default=sorted(SOURCES))
    args = parser.parse_args(argv)

    def present():
        for key in args.cases:
            case = native_case(key)
            if case is None:
                print(f"{SOURCES[key]}: source absent, skipped")
            else:
                yield case

    print_engine_scores(present(), detail=True)


if __name__ == "__main__":
    main()
