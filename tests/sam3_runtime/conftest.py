"""Fixtures shared by the video-logic tests."""

from __future__ import annotations

import pytest

from sam3_runtime.config import Sam3Config
from tests.parity.hf_reference import hf_video_model


@pytest.fixture(scope="module")
def shared_hf_model():
    """transformers' tiny video model, built once per module (seconds); tests patch it only
    through their own ``monkeypatch``."""
    model = hf_video_model(Sam3Config.tiny())
    return model, dict(model._modules)


@pytest.fixture
def hf_model(shared_hf_model):
    """The shared reference, checked to be as built so no test depends on the ones before it."""
    model, submodules = shared_hf_model
    assert dict(model._modules) == submodules, "an earlier test left the shared reference model changed"
    return model
