"""Finding, reading and checking SAM 3 checkpoints.

Two on-disk formats load into one canonical key space (the transformers names, which are also our
module names): the transformers ``model.safetensors`` and the official ``sam3.pt``. By job:

* :mod:`.errors` - :class:`CheckpointError` and the messages that say what to do;
* :mod:`.keys` - key spaces, official -> canonical conversion, key listings, :func:`check_state_dict`;
* :mod:`.resolve` - a spec (directory, file, hub repo id) -> local files;
* :mod:`.load` - reading the weights, :func:`load_state_dict` and :func:`load_strict`.
"""

from sam3_runtime.checkpoint.errors import CheckpointError
from sam3_runtime.checkpoint.keys import (
    KeyReport,
    Shape,
    check_state_dict,
    convert_official_state_dict,
    is_official_key_space,
    normalize_hf_keys,
    read_key_list_tsv,
    to_canonical,
)
from sam3_runtime.checkpoint.load import load_state_dict, load_strict
from sam3_runtime.checkpoint.resolve import CheckpointFormat, ResolvedCheckpoint, resolve_checkpoint

__all__ = [
    "CheckpointError",
    "CheckpointFormat",
    "KeyReport",
    "ResolvedCheckpoint",
    "Shape",
    "check_state_dict",
    "convert_official_state_dict",
    "is_official_key_space",
    "load_state_dict",
    "load_strict",
    "normalize_hf_keys",
    "read_key_list_tsv",
    "resolve_checkpoint",
    "to_canonical",
]
