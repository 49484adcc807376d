"""What every section of the job file shares: the frozen, strict base model and path resolution."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationInfo

NAME = re.compile(r"[A-Za-z0-9_.-]+")  # job and stream ids: they name Kafka keys, Parquet partitions, actors


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def base_dir(info: ValidationInfo) -> Path:
    """The directory relative paths resolve against: the job file's, passed as validation context."""
    context = info.context if isinstance(info.context, dict) else {}
    return Path(context.get("base_dir") or os.getcwd())


def exists(path: Path, *, file: bool = False) -> bool:
    """Whether ``path`` exists (is a file), False where the OS cannot even look: a name too long for it."""
    try:
        return path.is_file() if file else path.exists()
    except OSError:
        return False


def local_path(value: str, directory: Path) -> str:
    """``value`` made absolute against ``directory``; a trailing '/' (a directory source) is kept."""
    path = os.path.normpath(os.path.join(directory, os.path.expanduser(value)))
    return path + "/" if value.endswith("/") and not path.endswith("/") else path
