"""The step's output masks rendered all at once equal the per-session rule they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam3_runtime.host_reads import count_host_reads
from sam3_runtime.masks import masks_to_boxes
from sam3_runtime.rle import unpack_mask
from sam3_runtime.video.heuristics import non_overlapping
from sam3_runtime.video.render import RenderItem, exclusive_owner, pack_bits, render_step


def _reference(item: RenderItem, non_overlap: bool):
    """The engine's per-session output path before batching: float upsample, bool non-overlap, boxes."""
    masks = F.interpolate(item.low_res[:, None], size=item.size, mode="bilinear", align_corners=False)[:, 0] > 0
    if non_overlap and masks.shape[0] > 1:
        masks = non_overlapping(masks, item.tracker_scores, item.groups)
    kept = torch.nonzero(masks.flatten(1).any(1)).flatten().tolist()
    return kept, [tuple(b) for b in masks_to_boxes(masks)[kept].tolist()], masks[kept].numpy()


def _item(g: torch.Generator, m: int, size: tuple[int, int], groups=None, scores=None) -> RenderItem:
    low_res = torch.randn(m, 12, 16, generator=g) * 3 - 1
    if scores is None:
        scores = torch.rand(m, generator=g).round(decimals=1)  # rounded: ties happen
    if groups is None:
        groups = torch.randint(-1, 2, (m,), generator=g)
    return RenderItem(low_res, torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(groups), size)


@pytest.mark.parametrize("non_overlap", [True, False])
def test_render_step_equals_the_per_session_path_in_one_host_read(non_overlap):
    g = torch.Generator().manual_seed(0)
    items = [
        _item(g, 6, (37, 53)),
        _item(g, 1, (37, 53), scores=[0.0]),  # a lone object is never subject to the rule, even at score 0
        _item(g, 0, (37, 53)),
        _item(g, 5, (21, 19), scores=[0.5, 0.5, 0.0, 0.9, 0.5]),  # another frame size, ties and a zero score
        _item(g, 4, (37, 53), groups=[3, 3, 3, 3]),
    ]
    items[2] = RenderItem(torch.zeros(0, 12, 16), torch.zeros(0), torch.zeros(0, dtype=torch.long), (37, 53))
    with count_host_reads() as reads:
        rendered = render_step(items, non_overlap)
    assert reads.count == 1
    for item, got in zip(items, rendered, strict=True):
        kept, boxes, masks = _reference(item, non_overlap)
        assert got.kept == kept and got.boxes == boxes and got.size == item.size
        assert got.areas == [int(m.sum()) for m in masks]
        unpacked = np.stack([unpack_mask(p, item.size) for p in got.packed]) if kept else masks
        np.testing.assert_array_equal(unpacked, masks)


def test_nothing_to_render_reads_nothing():
    with count_host_reads() as reads:
        (out,) = render_step([RenderItem(torch.zeros(0, 4, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                                         (7, 5))], True)
    assert reads.count == 0 and out.kept == [] and out.packed.shape == (0, 5)


@pytest.mark.parametrize("seed", range(6))
def test_exclusive_owner_equals_non_overlapping_on_bool_masks(seed):
    g = torch.Generator().manual_seed(seed)
    n = 300 if seed == 5 else 9  # past 254 objects the running max needs a wider dtype
    masks = torch.rand(n, 11, 13, generator=g) > 0.5
    scores = torch.randint(0, 4, (n,), generator=g).float() / 3  # many ties, some exactly 0
    if seed == 4:
        scores = scores - 0.5  # negative scores own nothing either
    groups = torch.randint(0, 3, (n,), generator=g)
    expected = non_overlapping(masks, scores, groups)
    assert torch.equal(exclusive_owner(masks, scores, groups), expected)


@pytest.mark.parametrize("size", [(7, 5), (1, 1), (8, 8), (3, 11), (1080, 1920)])
def test_pack_bits_has_numpys_packbits_layout(size):
    g = torch.Generator().manual_seed(size[0])
    masks = torch.rand(3, *size, generator=g) > 0.5
    masks[1] = False
    masks[2] = True
    packed = pack_bits(masks).numpy()
    expected = np.stack([np.packbits(m.reshape(-1)) for m in masks.numpy()])
    np.testing.assert_array_equal(packed, expected)
