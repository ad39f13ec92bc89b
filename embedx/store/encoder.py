"""What `embedx encode` needs of a model that is not a training run: the encoder contract.

A finished run (`TrainedRun`) already has these attributes; the pixel reference and pretrained backbones
derive from `Encoder` so that encode's resume, sharding, identity checks and provenance serve them unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch


class Encoder:
    """Base of encoders that are not runs: no run folder, no classes; `model.embed(images)` gives vectors."""

    kind: ClassVar[str] = "encoder"
    classes: ClassVar[list[Any] | None] = None
    run_dir: ClassVar[Path | None] = None
    info: ClassVar[dict[str, Any]] = {}
    model: torch.nn.Module

    @property
    def checkpoint_hash(self) -> str:
        """Names the exact weights / fitted state, so a store never mixes two versions under one name."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the store keeps as the model's `config` provenance (JSON)."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Encoder:
        self.model.to(device)
        return self
