"""tests/devices.py: choosing the test device from the environment, and the tolerances that follow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.devices import (
    CPU_ONLY,
    FLOAT32_ONLY,
    REFERENCE_ONLY,
    TOLERANCES,
    DeviceUnavailable,
    TestDevice,
    assert_close,
    from_env,
    inputs_to,
    mask_agreement,
    not_here,
    running_on,
)

ROOT = Path(__file__).resolve().parents[1]
CPU_BF16 = TestDevice(torch.device("cpu"), torch.bfloat16, TOLERANCES[("cpu", torch.bfloat16)])
CPU_FP32 = TestDevice(torch.device("cpu"), torch.float32, TOLERANCES[("cpu", torch.float32)])
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")


def test_default_is_the_cpu_in_float32():
    target = from_env({})
    assert target == CPU_FP32 and target.is_reference
    assert from_env({"SAM3_TEST_DTYPE": "bf16"}) == CPU_BF16 and not CPU_BF16.is_reference


@pytest.mark.parametrize("env, says", [
    ({"SAM3_TEST_DTYPE": "float16"}, "SAM3_TEST_DTYPE='float16' is not supported"),
    ({"SAM3_TEST_DEVICE": "tpu"}, "SAM3_TEST_DEVICE='tpu' is not a device"),
    pytest.param({"SAM3_TEST_DEVICE": "cuda"}, "torch sees no CUDA GPU here", marks=no_gpu),
])
def test_unusable_settings_say_what_is_wrong(env, says):
    with pytest.raises(DeviceUnavailable, match=says):
        from_env(env)


@no_gpu
def test_an_unavailable_device_is_one_usage_error_before_any_test_runs():
    env = {**os.environ, "SAM3_TEST_DEVICE": "cuda"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_devices.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "SAM3_TEST_DEVICE" in line]
    assert len(errors) == 1 and "no CUDA GPU" in errors[0], errors
    assert "passed" not in proc.stdout and "failed" not in proc.stdout


def test_off_the_reference_tolerances_widen_but_still_catch_errors():
    ref = torch.linspace(-3, 3, 100)
    assert_close(ref * 1.02, ref, target=CPU_BF16, rtol=1e-5, atol=1e-6)  # a bf16-sized error passes
    with pytest.raises(AssertionError):
        assert_close(ref * 1.3, ref, target=CPU_BF16, rtol=1e-5, atol=1e-6)  # a wrong result does not
    with pytest.raises(AssertionError):
        assert_close(ref * 1.02, ref, target=CPU_FP32, rtol=1e-5, atol=1e-6)  # the reference keeps its own
    # the test's own tolerance still applies where it is looser than the table's
    assert_close(ref * 1.3, ref, target=CPU_BF16, rtol=0.5, atol=0.0)
    # device and dtype may differ from the reference's; integers stay exact
    assert_close(ref.bfloat16(), ref, target=CPU_BF16)
    with pytest.raises(AssertionError):
        assert_close(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4]), target=CPU_BF16)


def test_masks_compare_by_the_fraction_of_equal_pixels():
    ref = torch.zeros(100, dtype=torch.bool)
    ref[:50] = True
    flipped = ref.clone()
    flipped[:10] = False  # 90% equal
    assert mask_agreement(flipped, ref) == pytest.approx(0.9)
    assert_close(flipped, ref, target=CPU_BF16)
    flipped[:20] = False  # 80% equal: below the bf16 row
    with pytest.raises(AssertionError, match="agree on 80.00% of pixels"):
        assert_close(flipped, ref, target=CPU_BF16)


def test_listed_tests_are_skipped_only_where_they_cannot_hold():
    ref_only, fp32_only = next(iter(REFERENCE_ONLY)), next(iter(FLOAT32_ONLY))
    assert not_here(ref_only + "::test_x", CPU_FP32) is None
    assert "not on cpu bfloat16" in not_here(ref_only + "::test_x", CPU_BF16)
    assert not_here(fp32_only, CPU_FP32) is None and not_here(fp32_only, CPU_BF16)
    assert not_here("tests/parity/test_vision.py::test_anything", CPU_BF16) is None
    cpu_only = next(iter(CPU_ONLY))
    gpu = TestDevice(torch.device("cuda"), torch.float32, TOLERANCES[("cuda", torch.float32)])
    assert not_here(cpu_only, CPU_BF16) is None and "not on cuda float32" in not_here(cpu_only, gpu)
    assert not_here(fp32_only, gpu) is None and not_here(ref_only, gpu)


def test_running_on_a_target_sets_and_restores_torch_defaults():
    original = torch.testing.assert_close
    with running_on(CPU_BF16):
        assert torch.get_default_dtype() == torch.bfloat16 and torch.zeros(1).dtype == torch.bfloat16
        torch.testing.assert_close(torch.ones(3) * 1.05, torch.ones(3))  # bf16 tolerances in force
    assert torch.get_default_dtype() == torch.float32 and torch.testing.assert_close is original
    with running_on(CPU_FP32):
        assert torch.testing.assert_close is original


def test_host_inputs_follow_a_module_to_the_test_device():
    hook = inputs_to(torch.device("meta"))  # any device other than the CPU's
    moved = hook(torch.nn.Identity(), (torch.ones(2), 3, torch.zeros(1, dtype=torch.long)))
    assert [a.device.type if isinstance(a, torch.Tensor) else a for a in moved] == ["meta", 3, "meta"]
    assert moved[2].dtype == torch.long
