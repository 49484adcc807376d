"""``model:``: which checkpoint the engines load, on which device, in which precision."""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import ValidationInfo, field_validator

from pipeline.jobspec.common import Spec, base_dir, exists, local_path

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class ModelSpec(Spec):
    checkpoint: str = "facebook/sam3"  # hub repo id | local dir | .pt/.safetensors file
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value:
            raise ValueError("empty checkpoint (use a hub id like facebook/sam3, a directory or a .pt/.safetensors file)")
        expanded = os.path.expanduser(value)
        local = (os.path.isabs(expanded) or value.startswith((".", "~")) or value.count("/") >= 2
                 or value.endswith((".pt", ".pth", ".safetensors")))
        if local or exists(base_dir(info) / expanded):
            return local_path(value, base_dir(info))
        return value  # a hub repo id

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError(f"unknown device '{value}' (use auto, cpu, cuda or cuda:N)")
        return value
