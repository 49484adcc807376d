"""Packed masks and their COCO RLE, read by stream-side code without torch."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sam3_runtime.rle import decode_rle, pack_mask, packed_rle, unpack_mask
from sam3_runtime.video.types import TrackedObject


def _cases():
    rng = np.random.default_rng(0)
    yield "random", rng.random((37, 53)) > 0.6
    yield "empty", np.zeros((20, 30), bool)
    yield "full", np.ones((20, 30), bool)
    yield "7x5", rng.random((7, 5)) > 0.5
    yield "1x1 on", np.ones((1, 1), bool)
    yield "1x1 off", np.zeros((1, 1), bool)
    big = np.zeros((1080, 1920), bool)
    big[100:700, 300:1500] = rng.random((600, 1200)) > 0.3
    yield "1080x1920", big


@pytest.mark.parametrize(("name", "mask"), list(_cases()), ids=[c[0] for c in _cases()])
def test_packed_rle_is_pycocotools_byte_for_byte(name, mask):
    packed = pack_mask(mask)
    assert packed.dtype == np.uint8 and packed.shape == ((mask.size + 7) // 8,)
    np.testing.assert_array_equal(unpack_mask(packed, mask.shape), mask)
    rle = packed_rle(packed, mask.shape)
    coco = mask_utils.encode(np.asfortranarray(mask[:, :, None].astype(np.uint8)))[0]
    assert rle["size"] == list(mask.shape)
    assert rle["counts"].encode("ascii") == coco["counts"]
    np.testing.assert_array_equal(decode_rle([rle])[0], mask)


def test_unpack_names_the_size_that_does_not_fit():
    with pytest.raises(ValueError, match="packed 7x5 mask has 5 bytes"):
        unpack_mask(np.zeros(4, np.uint8), (7, 5))


def test_tracked_object_carries_a_packed_mask_and_gives_it_back():
    mask = np.zeros((9, 13), bool)
    mask[2:5, 3:11] = True
    obj = TrackedObject.from_mask(mask, track_id=4, concept="cat", score=0.8, tracker_score=0.7,
                                  box_xyxy=(3.0, 2.0, 11.0, 5.0))
    assert obj.area_px == 24 and obj.mask_size == (9, 13) and obj.packed_mask.nbytes == 15
    np.testing.assert_array_equal(obj.mask, mask)
    assert obj.mask.dtype == bool
    np.testing.assert_array_equal(decode_rle([obj.rle()])[0], mask)
