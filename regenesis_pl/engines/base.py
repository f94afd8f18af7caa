"""The generation protocol shared by every backend: chat requests + sampling settings -> n completions each.

Backends (``vllm_engine.VLLMEngine``, ``hf_engine.TransformersEngine``) render prompts with
``regenesis_pl.chat.render_prompt`` so synthesis, training and evaluation see identical text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

from regenesis_pl.hashing import digest

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings for one engine call.

    Args:
        n: Completions per request (>= 1).
        temperature: 0 means greedy; must be >= 0.
        top_p: Nucleus sampling mass in (0, 1].
        max_tokens: Maximum new tokens per completion (>= 1).
        stop: Strings that end a completion (not included in the returned text).
        seed: Base seed. A request's own seed comes from ``request_seeds`` when given, else ``seed + index``.
    """

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.n < 1:
            raise ValueError(f"sampling: n={self.n} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"sampling: temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling: top_p={self.top_p} must be in (0, 1]")
        if self.max_tokens < 1:
            raise ValueError(f"sampling: max_tokens={self.max_tokens} must be >= 1")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"sampling: n={self.n} with temperature=0 gives {self.n} identical greedy copies; "
                             "set temperature > 0 or n=1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def key(self) -> str:
        """Stable short hash of the settings (part of store/cache keys)."""
        return digest(asdict(self))


@dataclass(frozen=True)
class Completion:
    """One generated continuation."""

    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS or stop string) or "length"


@dataclass
class RequestOutput:
    """The n completions of one request."""

    completions: list[Completion]
    prompt_tokens: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """One conversation to complete, with its own sampling settings and seed (a unit of ``engines.streaming``).

    Attributes:
        conversation: The chat messages.
        sampling: Its sampling settings (``n`` completions).
        seed: Its request seed (completion seeds derive from it, see ``hashing.completion_seed``).
        label: The stage it belongs to ("adapt", "path", ...), for ledgers and progress.
    """

    conversation: Conversation
    sampling: SamplingConfig
    seed: int
    label: str = ""


# What a stream calls with the requests finished since its last call ((index, output), each request once);
# it returns the follow-up requests to add to the same stream (indices continue after the last one given).
FollowUp = Callable[[list[tuple[int, RequestOutput]]], Sequence[Request]]


@runtime_checkable
class Engine(Protocol):
    """What synthesis, evaluation and the callbacks need from a generation backend."""

    name: str

    @property
    def tokenizer(self): ...

    @property
    def weights_id(self) -> str:
        """Fingerprint of the weights now served (base model + adapter); changes whenever they change."""
        ...

    def generate(
        self,
        conversations: Sequence[Conversation],
        sampling: SamplingConfig,
        request_seeds: Sequence[int] | None = None,
        progress: str | None = None,
        on_finished: Callable[[list[tuple[int, RequestOutput]]], None] | None = None,
    ) -> list[RequestOutput]:
        """Generate ``sampling.n`` completions for each conversation (one output per conversation, in order).

        ``progress``: label for a progress bar, or None for none. ``on_finished``: called during the call with
        ``(index, output)`` of the conversations whose completions have all finished since its last call (each
        conversation exactly once), so a caller can make results durable as they arrive.
        """
        ...

    def set_adapter(self, adapter_dir: str | None) -> None:
        """Serve this LoRA adapter (a peft folder) from now on, or the bare weights when None. No rebuild."""
        ...

    def load_weights(self, model_dir: str, weights_id: str | None = None) -> None:
        """Replace the served full weights with those in a Hugging Face folder (same architecture); serve them
        under ``weights_id`` when given (else the folder's fingerprint)."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory for training (no-op where unsupported)."""
        ...

    def wake(self) -> None:
        """Undo ``sleep``."""
        ...

    def close(self) -> None:
        """Shut the engine down and free its resources."""
        ...
