"""Where the model tests run: device, dtype and the tolerances that go with them.

``SAM3_TEST_DEVICE`` (``cpu``, ``cuda``, ``cuda:N``; default ``cpu``) and ``SAM3_TEST_DTYPE``
(``float32`` or ``bfloat16``; default ``float32``) choose where the parity and engine tests run.
The default, CPU in float32, is the suite as it always ran: every test keeps its own tolerances.
Anywhere else, tensor comparisons in those tests go through ``assert_close`` below, which widens
each test's own tolerance to at least the row of ``TOLERANCES`` for the device and dtype, and
compares boolean masks by the fraction of equal pixels rather than exactly.

Tests that only make sense on the CPU (Ray, Kafka, storage, media) ignore these variables.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pytest
import torch
from torch.testing import assert_close as _torch_assert_close  # the original, before any test patches it

DEVICE_ENV = "SAM3_TEST_DEVICE"
DTYPE_ENV = "SAM3_TEST_DTYPE"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Tolerance:
    """How far a value may be from the reference's on one device and dtype.

    ``rtol`` is relative to each reference element; ``atol`` is relative to the largest magnitude
    of the compared reference tensor, or to 1 when that is smaller (parity tests compare logits,
    features and scores whose scales differ by orders of magnitude, and low precision errs in
    proportion to that scale; values of order 1 or less err by about as much as values of 1).
    ``mask_agreement`` is the least fraction of equal pixels between two boolean masks.
    """

    rtol: float
    atol: float
    mask_agreement: float
    why: str


# (device type, dtype) -> tolerance. The CPU float32 row is never applied: there the tests' own
# tolerances hold unchanged.
TOLERANCES: Mapping[tuple[str, torch.dtype], Tolerance] = {
    ("cpu", torch.float32): Tolerance(
        rtol=0.0, atol=0.0, mask_agreement=1.0,
        why="the reference platform: each test's own tolerance, as written",
    ),
    ("cuda", torch.float32): Tolerance(
        rtol=1e-3, atol=1e-4, mask_agreement=0.999,
        why="TF32 is switched off, but cuBLAS/cuDNN pick other reduction orders than the CPU and "
            "differ between batch sizes; float32 rounding over a few hundred accumulations stays "
            "near 1e-5 relative, so 1e-3 leaves room for depth while still catching any wrong op; "
            "a logit that close to 0 may flip a pixel, hence 0.1% of pixels (reasoned, not yet "
            "measured on a GPU)",
    ),
    ("cuda", torch.bfloat16): Tolerance(
        rtol=0.1, atol=0.08, mask_agreement=0.85,
        why="bfloat16 keeps 8 significant bits (relative step 2^-8 = 0.4%): ours and the reference "
            "round after different ops, and a dozen layers compound that to a few percent of the "
            "tensor's scale (measured on the CPU: up to 4% relative error in detector logits); masks "
            "are thresholded logits, and random weights leave wide areas near 0 where rounding flips "
            "pixels (measured: the worst of 200 detector masks at IoU 0.89), so IoU >= 0.85 "
            "(measured on the CPU's bfloat16, not yet on a GPU)",
    ),
    ("cpu", torch.bfloat16): Tolerance(
        rtol=0.1, atol=0.08, mask_agreement=0.85,
        why="the same rounding as bfloat16 on a GPU (CPU kernels accumulate in float32 too); lets "
            "the bfloat16 tolerances be checked without a GPU",
    ),
}


# Tests that run on the CPU only, whatever the test device, with the reason (node id prefixes).
CPU_ONLY: Mapping[str, str] = {
    "tests/parity/test_preprocess.py": "the host-side preprocessing against PIL's, on the CPU by design",
}
# Tests that run on CPU float32 only.
REFERENCE_ONLY: Mapping[str, str] = {
    "tests/parity/test_loaders.py": "checkpoint files and their loading: float32 as published, device-independent",
    "tests/parity/test_tracker_modules.py::test_bf16_smoke": "compares a float32 model with a bfloat16 one itself",
}
# Tests that need float32 arithmetic (exact values at float32 thresholds), on any device.
FLOAT32_ONLY: Mapping[str, str] = {
    "tests/parity/test_detr.py::test_decoder_box_refinement_at_the_inverse_sigmoid_clamp":
        "checks boxes sitting exactly at the float32 clamp 1e-4, which bfloat16 cannot represent",
    "tests/parity/test_tracker_modules.py::test_mask_decoder_parity[False-None]":
        "candidates' stability scores sit near the selection threshold: bfloat16 rounding flips the pick",
    # whole streams: a decision within rounding of its threshold (a new object, a visible one)
    # changes everything after it; the modules inside are compared in bfloat16 one by one
    "tests/parity/test_video_text.py": "detections within bfloat16 rounding of the new-object threshold",
    "tests/parity/test_video_tracking.py::test_box_prompted_streaming_matches_transformers_after_every_ring_wraps":
        "its scenario keeps every object score 0.007 away from 0, a margin float32 only keeps",
    "tests/parity/test_video_tracking.py::test_streams_batched_together_equal_streams_alone":
        "batched and single streams round differently in bfloat16, which flips visibility near 0",
    "tests/sam3_runtime/test_video_engine.py::test_sessions_stepped_together_equal_each_stepped_alone":
        "compares batched and single steps' mask areas exactly; in bfloat16 they round a pixel apart",
}


class DeviceUnavailable(ValueError):
    """The requested test device or dtype cannot be used on this machine."""


@dataclass(frozen=True)
class TestDevice:
    """The device and dtype the model tests run on, with their tolerance row."""

    __test__ = False  # not a test class, whatever its name

    device: torch.device
    dtype: torch.dtype
    tolerance: Tolerance

    @property
    def is_reference(self) -> bool:
        """CPU in float32: the tests run exactly as written."""
        return self.device.type == "cpu" and self.dtype == torch.float32

    def describe(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


def from_env(environ: Mapping[str, str] | None = None) -> TestDevice:
    """The test device named by ``SAM3_TEST_DEVICE`` / ``SAM3_TEST_DTYPE``; raises ``DeviceUnavailable``
    with a one-line reason when it cannot be used here."""
    env = os.environ if environ is None else environ
    spec = env.get(DEVICE_ENV, "cpu").strip().lower() or "cpu"
    dtype_spec = env.get(DTYPE_ENV, "float32").strip().lower() or "float32"
    if dtype_spec not in _DTYPES:
        raise DeviceUnavailable(f"{DTYPE_ENV}={dtype_spec!r} is not supported: use float32 or bfloat16")
    dtype = _DTYPES[dtype_spec]
    if spec == "cpu":
        device = torch.device("cpu")
    elif spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"{DEVICE_ENV}={spec} but torch sees no CUDA GPU here "
                                    f"(torch {torch.__version__}); unset it to run on the CPU")
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise DeviceUnavailable(f"{DEVICE_ENV}={spec} but only {torch.cuda.device_count()} GPU(s) are visible")
        device = torch.device("cuda", index)
    else:
        raise DeviceUnavailable(f"{DEVICE_ENV}={spec!r} is not a device: use cpu, cuda or cuda:N")
    return TestDevice(device=device, dtype=dtype, tolerance=TOLERANCES[(device.type, dtype)])


def not_here(nodeid: str, target: TestDevice) -> str | None:
    """Why the test ``nodeid`` does not run on ``target`` (``CPU_ONLY``, ``REFERENCE_ONLY``, ``FLOAT32_ONLY``), or None."""
    rules = ({} if target.device.type == "cpu" else dict(CPU_ONLY)) | ({} if target.is_reference else dict(REFERENCE_ONLY))
    rules |= {} if target.dtype == torch.float32 else dict(FLOAT32_ONLY)
    return next((f"not on {target.describe()}: {why}" for prefix, why in rules.items() if nodeid.startswith(prefix)), None)


def widened(rtol: float) -> float:
    """A test's own relative tolerance (one it checks itself, not through ``assert_close``), widened
    to the test device's."""
    target = from_env()
    return rtol if target.is_reference else max(rtol, target.tolerance.rtol)


def least_agreement(fraction: float) -> float:
    """A test's own least mask IoU / agreement, lowered to the test device's ``mask_agreement``."""
    target = from_env()
    return fraction if target.is_reference else min(fraction, target.tolerance.mask_agreement)


def configure_backends(target: TestDevice) -> None:
    """float32 on a GPU means float32: TF32 matmuls (10-bit mantissa) would need bfloat16-like tolerances."""
    if target.device.type == "cuda" and target.dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def place(module: torch.nn.Module, target: TestDevice) -> torch.nn.Module:
    """The module on the test device, its floating point weights and buffers in the test dtype."""
    return module.to(device=target.device, dtype=target.dtype)


def mask_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The fraction of equal pixels of two boolean masks of one shape (1.0 for empty masks)."""
    if a.shape != b.shape:
        raise AssertionError(f"mask shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        return 1.0
    return float((a.cpu() == b.cpu()).float().mean())


def assert_close(actual, expected, *, target: TestDevice, rtol: float | None = None, atol: float | None = None,
                 **kwargs) -> None:
    """``torch.testing.assert_close`` with the test's own tolerance widened to the target's row.

    On the reference platform this is ``torch.testing.assert_close`` itself. Elsewhere both sides
    are compared as float32 on the CPU (so device and dtype may differ); boolean tensors must agree
    on ``mask_agreement`` of their pixels; integer tensors still compare exactly (ids, counts).
    """
    if target.is_reference:
        _torch_assert_close(actual, expected, rtol=rtol, atol=atol, **kwargs)
        return
    if not isinstance(actual, torch.Tensor) or not isinstance(expected, torch.Tensor):
        # numbers and containers: compare elementwise through tensors where possible
        if isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple)) and len(actual) == len(expected):
            for a, e in zip(actual, expected, strict=True):
                assert_close(a, e, target=target, rtol=rtol, atol=atol, **kwargs)
            return
        actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    msg = kwargs.get("msg")
    tol = target.tolerance
    if actual.dtype == torch.bool or expected.dtype == torch.bool:
        agreement = mask_agreement(actual.bool(), expected.bool())
        assert agreement >= tol.mask_agreement, (
            f"{msg + ': ' if msg else ''}masks agree on {agreement:.2%} of pixels, "
            f"below {tol.mask_agreement:.2%} for {target.describe()} (tests/devices.py)")
        return
    if not (actual.is_floating_point() or expected.is_floating_point()):
        _torch_assert_close(actual.cpu(), expected.cpu(), rtol=0, atol=0, check_dtype=False, msg=msg)
        return
    a, e = actual.detach().cpu().float(), expected.detach().cpu().float()
    scale = max(float(e.abs().max()), 1.0) if e.numel() and torch.isfinite(e).all() else 1.0
    _torch_assert_close(
        a, e, rtol=max(rtol or 0.0, tol.rtol), atol=max(atol or 0.0, tol.atol * scale),
        equal_nan=kwargs.get("equal_nan", False), check_dtype=False, msg=msg)


@contextlib.contextmanager
def running_on(target: TestDevice) -> Iterator[None]:
    """Within: tensors and models that tests create land on the target device in the target dtype
    (torch's default device and dtype; a bare ``torch.Generator()`` is one of that device), and ``torch.testing.assert_close`` is ``assert_close`` above.
    On the reference platform it changes nothing."""
    if target.is_reference:
        yield
        return
    previous_dtype, previous_device = torch.get_default_dtype(), torch.get_default_device()

    def device_aware_assert_close(actual, expected, *, rtol=None, atol=None, **kwargs):
        assert_close(actual, expected, target=target, rtol=rtol, atol=atol, **kwargs)

    hook = None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.testing, "assert_close", device_aware_assert_close)
        if target.device.type != "cpu":
            # a seeded torch.Generator() is a CPU generator, which factories on the GPU refuse
            patch.setattr(torch, "Generator", _generator_class(target.device))
            # host tensors a test hands to a module (token ids from the tokenizer, say) follow it there
            hook = torch.nn.modules.module.register_module_forward_pre_hook(inputs_to(target.device))
        torch.set_default_dtype(target.dtype)
        torch.set_default_device(target.device)
        try:
            yield
        finally:
            torch.set_default_dtype(previous_dtype)
            torch.set_default_device(previous_device)
            if hook is not None:
                hook.remove()


def inputs_to(device: torch.device):
    """A forward pre-hook moving a module's positional CPU tensor inputs to ``device`` (dtypes kept)."""

    def hook(module: torch.nn.Module, args: tuple) -> tuple:
        return tuple(a.to(device) if isinstance(a, torch.Tensor) and a.device.type == "cpu" else a for a in args)

    return hook


def _generator_class(device: torch.device) -> type:
    class DeviceGenerator(_TorchGenerator):
        """``torch.Generator`` whose default device is the test device."""

        def __new__(cls, device_=None, **kwargs):
            chosen = kwargs.get("device", device_)
            return super().__new__(cls, chosen if chosen is not None else device)

        def __init__(self, *args, **kwargs):
            pass

    return DeviceGenerator


_TorchGenerator = torch.Generator
