"""Round arithmetic of the self-improvement loop, free of Lightning.

Rounds map onto epochs: a fit runs ``rounds * epochs_per_round`` epochs and round ``k`` is epochs
``k * epochs_per_round`` to ``(k + 1) * epochs_per_round - 1``. Rounds are 0-based.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoundSchedule:
    """How many rounds a fit runs and how many epochs each round trains."""

    rounds: int = 1
    epochs_per_round: int = 1

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.epochs_per_round < 1:
            raise ValueError(f"data: rounds={self.rounds} and epochs_per_round={self.epochs_per_round} must be >= 1")

    @property
    def epochs(self) -> int:
        """Epochs of the whole fit (the Trainer's ``max_epochs``)."""
        return self.rounds * self.epochs_per_round

    def round_of(self, epoch: int) -> int:
        """The round that epoch ``epoch`` (0-based) belongs to."""
        return epoch // self.epochs_per_round

    def starts_round(self, epoch: int) -> bool:
        """Whether ``epoch`` is the first epoch of its round."""
        return epoch % self.epochs_per_round == 0

    def ends_round(self, epoch: int) -> bool:
        """Whether ``epoch`` is the last epoch of its round."""
        return (epoch + 1) % self.epochs_per_round == 0

    def check_epoch(self, epoch: int) -> None:
        """One-line error for an epoch past the last round (e.g. a checkpoint of a longer run)."""
        if self.round_of(epoch) >= self.rounds:
            raise ValueError(f"epoch {epoch} is past the last round ({self.rounds} rounds x {self.epochs_per_round} "
                             "epochs); raise data.rounds to train more rounds")
