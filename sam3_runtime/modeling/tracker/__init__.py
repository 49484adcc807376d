"""SAM 3 tracker (SAM 2 style): prompt encoder, mask decoder, memory encoder / attention."""

from __future__ import annotations

from .mask_decoder import MaskDecoder, MaskDecoderOutput
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder
from .prompt_encoder import PromptEncoder
from .tracker_model import EncodedMemory, MemoryBank, TrackerMaskOutput, TrackerModel

__all__ = [
    "EncodedMemory",
    "MaskDecoder",
    "MaskDecoderOutput",
    "MemoryAttention",
    "MemoryBank",
    "MemoryEncoder",
    "PromptEncoder",
    "TrackerMaskOutput",
    "TrackerModel",
]
