from __future__ import annotations

import types

import pytest

pytest_plugins = ["tests.s3_server"]  # s3_server, s3_env: a real S3-compatible server for storage tests


def pytest_configure(config):
    """Check SAM3_TEST_DEVICE / SAM3_TEST_DTYPE once, before collection: an unusable device is one
    usage error, not a failure in every model test."""
    from tests.devices import DeviceUnavailable, configure_backends, from_env

    try:
        target = from_env()
    except DeviceUnavailable as e:
        raise pytest.UsageError(str(e)) from None
    configure_backends(target)


def pytest_collection_modifyitems(config, items):
    """Off the reference platform, the tests listed in tests/devices.py as CPU-float32-only are skipped."""
    from tests.devices import from_env, not_here

    target = from_env()
    for item in items:
        reason = not_here(item.nodeid, target)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_report_header(config):
    from tests.devices import from_env

    target = from_env()
    return f"model tests on: {target.describe()}" + ("" if target.is_reference else f" ({target.tolerance.why})")


@pytest.fixture(scope="session")
def test_device():
    """Where the parity and engine tests run (tests/devices.py): CPU float32 unless SAM3_TEST_DEVICE /
    SAM3_TEST_DTYPE say otherwise."""
    from tests.devices import from_env

    return from_env()


@pytest.fixture
def hf_roi_align(monkeypatch):
    """Give transformers' SAM 3 a torchvision-exact ROI align (torchvision cannot be installed here)."""
    from transformers.models.sam3 import modeling_sam3

    from tests.parity.hf_reference import reference_roi_align

    fake = types.SimpleNamespace(ops=types.SimpleNamespace(roi_align=reference_roi_align))
    monkeypatch.setattr(modeling_sam3, "torchvision", fake, raising=False)


@pytest.fixture(scope="session", autouse=True)
def single_intra_op_thread():
    """The suite's tensors are tiny: on a small shared machine a second intra-op thread mostly
    spin-waits on the first (measured: several times slower), so tests run with one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray instance for the whole test session (starting Ray takes seconds). Its actors get the
    test S3 server's endpoint and credentials (they do not see a test's monkeypatched environment)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=6, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                 runtime_env={"env_vars": s3_server.env})
    yield ray
    ray.shutdown()
