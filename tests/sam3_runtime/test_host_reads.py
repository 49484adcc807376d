"""``to_host`` is the engine's one counted way to read device values."""

from __future__ import annotations

import numpy as np
import torch

from sam3_runtime.host_reads import count_host_reads, to_host


def test_values_shapes_and_dtypes_survive_one_read():
    a = torch.arange(12, dtype=torch.long).view(3, 4)
    b = torch.tensor([0.5, -1.25])
    c = torch.tensor([[True, False]])
    d = torch.tensor([1.5, 2.0], dtype=torch.bfloat16)
    e = torch.arange(3, dtype=torch.long) * 7
    with count_host_reads() as reads:
        ha, hb, hc, hd, he = to_host(a, b, c, d, e)
    assert reads.count == 1
    assert reads.elements == a.numel() + b.numel() + c.numel() + d.numel() + e.numel()
    np.testing.assert_array_equal(ha, a.numpy())
    np.testing.assert_array_equal(hb, b.numpy())
    np.testing.assert_array_equal(hc, c.numpy())
    np.testing.assert_array_equal(hd, np.array([1.5, 2.0], dtype=np.float32))
    np.testing.assert_array_equal(he, e.numpy())
    assert ha.shape == (3, 4) and hc.dtype == np.bool_ and he.dtype == np.int64


def test_each_call_counts_once_and_only_inside_the_block():
    t = torch.ones(4)
    to_host(t)  # outside any block: not counted anywhere
    with count_host_reads() as outer:
        to_host(t)
        with count_host_reads() as inner:
            to_host(t)
            to_host(t, t)
        to_host(t)
    assert inner.count == 2
    assert outer.count == 2  # the inner block counts its own reads


def test_empty_and_zero_size_tensors():
    with count_host_reads() as reads:
        assert to_host() == []
        (z,) = to_host(torch.zeros(0, 5))
    assert z.shape == (0, 5)
    assert reads.count == 2
