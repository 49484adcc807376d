"""The parity tests run on the test device (tests/devices.py): models and inputs the tests create
land there in the test dtype, and tensor comparisons use that device's tolerances."""

from __future__ import annotations

import pytest

from tests.devices import running_on


@pytest.fixture(scope="package", autouse=True)
def parity_on_test_device(test_device):
    # package scope: set before the module-scoped model fixtures build their models, undone after
    with running_on(test_device):
        yield test_device
