"""``TrackedBatch``: the tracker's output for every object of a step, with each session's rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TrackedBatch:
    """Per object of every session (sessions in order; in each, concept objects then prompted
    ones): ``masks [T, 1, h, w]`` logits, ``scores [T, 1]`` object-score logits, ``pointers [T, C]``
    (None when there is no object)."""

    masks: torch.Tensor
    scores: torch.Tensor
    pointers: torch.Tensor | None
    counts: np.ndarray  # [S] objects of each session
    concept_counts: np.ndarray  # [S] concept (detector-driven) objects of each session

    def _start(self, f: int) -> int:
        return int(self.counts[:f].sum())

    def concept_index(self, f: int) -> np.ndarray:
        """Rows of session ``f``'s concept objects (its table rows, in order)."""
        start = self._start(f)
        return np.arange(start, start + int(self.concept_counts[f]), dtype=np.int64)

    def prompted_index(self, f: int) -> np.ndarray:
        """Rows of session ``f``'s prompted objects."""
        start = self._start(f) + int(self.concept_counts[f])
        return np.arange(start, self._start(f) + int(self.counts[f]), dtype=np.int64)

    def per_session(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """``(masks, scores, pointers)`` of each session (views, no copies)."""
        sizes = self.counts.tolist()
        masks, scores = self.masks.split(sizes), self.scores.split(sizes)
        pointers = self.pointers.split(sizes) if self.pointers is not None else [None] * len(sizes)
        return list(zip(masks, scores, pointers, strict=True))
