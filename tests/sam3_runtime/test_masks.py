import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from sam3_runtime.masks import decode_rle, encode_rle, mask_iou, mask_nms, masks_to_boxes


def _random_masks(n=5, h=37, w=53, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, generator=g) > 0.6


def test_rle_round_trip_and_pycocotools_reads_it():
    masks = _random_masks()
    rles = encode_rle(masks)
    assert [r["size"] for r in rles] == [[37, 53]] * 5
    assert all(isinstance(r["counts"], str) for r in rles)
    np.testing.assert_array_equal(decode_rle(rles), masks.numpy())
    # a consumer decoding with pycocotools directly gets the same pixels and areas
    coco = mask_utils.decode([{"size": r["size"], "counts": r["counts"]} for r in rles])
    np.testing.assert_array_equal(coco.transpose(2, 0, 1).astype(bool), masks.numpy())
    assert mask_utils.area([{"size": r["size"], "counts": r["counts"].encode()} for r in rles]).tolist() == masks.sum((1, 2)).tolist()


def test_rle_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        encode_rle(torch.zeros(4, 4, dtype=torch.bool))


def test_masks_to_boxes_is_tight_and_empty_is_zero():
    m = torch.zeros(2, 20, 30, dtype=torch.bool)
    m[0, 3:7, 10:25] = True
    boxes = masks_to_boxes(m)
    assert boxes[0].tolist() == [10.0, 3.0, 25.0, 7.0]
    assert boxes[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_mask_iou_matches_definition():
    a = _random_masks(3, seed=1)
    b = _random_masks(4, seed=2)
    iou = mask_iou(a, b)
    for i in range(3):
        for j in range(4):
            inter = (a[i] & b[j]).sum().item()
            union = (a[i] | b[j]).sum().item()
            assert iou[i, j].item() == pytest.approx(inter / union)


def test_mask_nms_suppresses_overlaps_keeps_order():
    m = torch.zeros(4, 10, 10, dtype=torch.bool)
    m[0, :5, :5] = True
    m[1, :5, :4] = True   # IoU 0.8 with mask 0
    m[2, 5:, 5:] = True   # disjoint
    m[3, :5, :5] = True   # duplicate of mask 0, higher score
    scores = torch.tensor([0.9, 0.8, 0.5, 0.95])
    keep = mask_nms(m, scores, iou_threshold=0.5)
    assert keep.tolist() == [3, 2]
    # identical masks always suppress; a 0.8 overlap survives a 0.99 threshold
    assert mask_nms(m, scores, iou_threshold=0.99).tolist() == [3, 1, 2]
