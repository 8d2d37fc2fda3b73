"""harness.native: the validation set's halved CT cases at their sources' native resolution, and
its ICBM lobar parcels at 1 mm."""

import numpy as np
import pytest

from harness import native, valset


def test_native_lung1_has_the_valset_classes_at_twice_the_in_plane_voxels():
    if valset.find_source(native.SOURCES["lung1"]) is None:
        pytest.skip("../shared/samples is absent")
    case = native.native_case("lung1")
    assert case.name.startswith("CT_") and case.num_classes == 5  # body, two lungs, bone, the real lesion
    assert case.imgs.shape == case.gts.shape and case.imgs.shape[2] == 512
    assert case.spacing[0] == case.spacing[1] < 1.0  # native in-plane spacing, stored (x, y, z)


def test_the_upsampled_icbm_parcels_keep_every_parcel_at_eight_times_the_voxels():
    if valset.find_source(native.SOURCES["icbm2x"]) is None:
        pytest.skip("../shared/samples is absent")
    case = native.native_case("icbm2x")
    halved = valset.icbm_cases(valset.find_source(native.SOURCES["icbm2x"]))[1]
    assert case.imgs.shape == tuple(2 * n for n in halved.gts.shape) == case.gts.shape
    assert case.num_classes == halved.gts.max() and np.allclose(case.spacing, np.asarray(halved.spacing) / 2)
    for label in range(1, case.num_classes + 1):  # each parcel about 8x its voxels, nowhere else
        ratio = (case.gts == label).sum() / (halved.gts == label).sum()
        assert 6.5 < ratio < 9.5
