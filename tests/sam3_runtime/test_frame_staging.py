"""FrameStaging: frames reach the device through one reused host buffer (pinned on CUDA), unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3_runtime.preprocess import FrameStaging, to_model_input


def _frames(*shapes, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes]


def test_frames_of_any_size_come_through_and_later_steps_reuse_the_buffer():
    staging = FrameStaging("cpu")
    first = _frames((6, 9), (4, 5))
    first[0].flags.writeable = False  # frames from Ray's object store are read-only
    got = staging.upload(first)
    assert [g.shape for g in got] == [(1, 6, 9, 3), (1, 4, 5, 3)]
    assert all(np.array_equal(g[0].numpy(), f) for g, f in zip(got, first, strict=True))
    buffer = staging._buffer.data_ptr()
    assert staging.capacity == sum(f.size for f in first)

    second = _frames((5, 5), seed=1)  # smaller: the same buffer, overwritten
    again = staging.upload(second)
    assert staging._buffer.data_ptr() == buffer
    assert np.array_equal(again[0][0].numpy(), second[0])
    # what the first step got is its own memory, not a view the second step overwrote
    assert all(np.array_equal(g[0].numpy(), f) for g, f in zip(got, first, strict=True))

    bigger = _frames((20, 20), (3, 3), seed=2)
    grown = staging.upload(bigger)
    assert staging.capacity == sum(f.size for f in bigger)
    assert all(np.array_equal(g[0].numpy(), f) for g, f in zip(grown, bigger, strict=True))


def test_a_cpu_engine_ignores_staging():
    frames = _frames((30, 40), (20, 20))
    staging = FrameStaging("cpu")
    plain = to_model_input(frames, 28, "cpu", torch.float32)
    staged = to_model_input(frames, 28, "cpu", torch.float32, staging=staging)
    assert torch.equal(plain, staged)
    assert staging.capacity == 0 and not staging.pinned  # nothing to upload on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned uploads need a CUDA device")
def test_cuda_uploads_go_through_a_pinned_buffer_and_match_pageable_ones():
    frames = _frames((48, 64), (32, 32))
    staging = FrameStaging("cuda")
    staged = to_model_input(frames, 28, "cuda", torch.float32, staging=staging)
    assert staging.pinned and staging._buffer.is_pinned()
    torch.testing.assert_close(staged, to_model_input(frames, 28, "cuda", torch.float32), atol=0, rtol=0)
    for seed in range(3):  # the buffer is rewritten only after the previous upload from it finished
        more = _frames((48, 64), (32, 32), seed=seed + 1)
        torch.testing.assert_close(to_model_input(more, 28, "cuda", torch.float32, staging=staging),
                                   to_model_input(more, 28, "cuda", torch.float32), atol=0, rtol=0)
