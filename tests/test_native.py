"""harness.native: the validation set's halved CT cases at their sources' native resolution."""

import pytest

from harness import native, valset


def test_native_lung1_has_the_valset_classes_at_twice_the_in_plane_voxels():
    if valset.find_source(native.SOURCES["lung1"]) is None:
        pytest.skip("../shared/samples is absent")
    case = native.native_case("lung1")
    assert case.name.startswith("CT_") and case.num_classes == 5  # body, two lungs, bone, the real lesion
    assert case.imgs.shape == case.gts.shape and case.imgs.shape[2] == 512
    assert case.spacing[0] == case.spacing[1] < 1.0  # native in-plane spacing, stored (x, y, z)
