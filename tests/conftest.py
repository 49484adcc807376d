from __future__ import annotations

import types

import pytest


@pytest.fixture
def hf_roi_align(monkeypatch):
    """Give transformers' SAM 3 a torchvision-exact ROI align (torchvision cannot be installed here)."""
    from transformers.models.sam3 import modeling_sam3

    from tests.hf_reference import reference_roi_align

    fake = types.SimpleNamespace(ops=types.SimpleNamespace(roi_align=reference_roi_align))
    monkeypatch.setattr(modeling_sam3, "torchvision", fake, raising=False)
