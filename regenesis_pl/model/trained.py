"""What the round's callbacks need from the module they train, as one small typed protocol.

The engine, weight-push and export callbacks serve and save the weights being trained: they need to know
whether only adapters train (and on which kind of base), a cheap fingerprint of the trainable weights, and the
three ways of writing them. ``SFTModule`` implements all of it; a module of one's own does too, or is refused
in one line when a callback first meets it, not with an ``AttributeError`` in the middle of a round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch

Mode = Literal["lora", "qlora", "full"]


@runtime_checkable
class TrainedWeights(Protocol):
    """The trainable weights as the callbacks see them."""

    mode: Mode  # "lora" and "qlora" train adapters on a frozen base (QLoRA: a 4-bit one); "full" every weight

    @property
    def adapter_only(self) -> bool:
        """Only adapters train (lora, qlora): the engines can serve them on the base without a weight reload."""

    def trainable_state_fingerprint(self) -> str:
        """A hash of the trainable weights (adapters only: cheap), to tell a real change from a reset."""

    def merge_blocker(self) -> str | None:
        """Why the adapters cannot be merged into served full weights, or None when they can."""

    def save_adapter(self, path: str | Path) -> Path:
        """Write the adapters as a peft folder the engines serve."""

    def save_served_weights(self, path: str | Path, dtype: torch.dtype, base_only: bool = False) -> Path:
        """Write full weights the engines load (adapters merged; ``base_only``: the base alone)."""

    def export_hf(self, path: str | Path, merged: bool = False) -> Path:
        """Write the round's export: the adapters, or with ``merged`` a standalone Hugging Face model folder."""


def trained_weights(module: object, by: str) -> TrainedWeights:
    """``module`` as ``TrainedWeights``, or a one-line TypeError naming what it lacks (``by``: who asks)."""
    if isinstance(module, TrainedWeights):
        return module
    members = ("mode", "adapter_only", "trainable_state_fingerprint", "merge_blocker", "save_adapter",
               "save_served_weights", "export_hf")
    missing = [name for name in members if not hasattr(module, name)]
    raise TypeError(f"{by}: {type(module).__name__} lacks {missing} of regenesis_pl.model.trained.TrainedWeights; "
                    "train with regenesis_pl.model.SFTModule (or a subclass) or implement them")
