"""How trained LoRA weights reach an engine: as an adapter request, or folded into the served weights.

``adapter`` serves the peft folder through the engine's LoRA path (a LoRARequest in vLLM); ``merged`` folds the
adapter into a copy of the base in the engine's dtype and reloads the weights in place, which decodes as fast
as the base model. ``auto`` measures both once per run on a short greedy probe and keeps the faster, unless the
adapter cannot fold (DoRA, LoRA on embeddings): then it serves the adapter, and says why. A QLoRA adapter folds
into its dequantized 4-bit base, the weights it was trained against (``model.merge.dequantized_state``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

PushMode = Literal["auto", "adapter", "merged"]
PUSH_MODES = ("auto", "adapter", "merged")
MERGED_GAIN = 1.05  # auto keeps the adapter path unless merging decodes at least 5% faster

PROBE_QUESTIONS = (
    "What is 17 + 25? Think step by step.",
    "A shelf holds 8 rows of 12 books. How many books are on it?",
    "Is 91 a prime number? Explain briefly.",
    "Tom had 40 apples and sold 13. How many are left?",
    "Name three colors of the rainbow and describe each in one sentence.",
    "If a train travels 60 km per hour for 3 hours, how far does it go?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "List the first five even numbers and add them up.",
)


@dataclass
class Probe:
    """Greedy decode speed of one way of serving, on the probe prompts."""

    tokens: int
    seconds: float
    texts: list[str]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def probe(engine, max_tokens: int = 48) -> Probe:
    """Time a greedy generation of the probe prompts on ``engine`` as it serves now (after a one-prompt warm-up,
    so a lazily loaded adapter is not billed to the decode speed)."""
    from regenesis_pl.engines.base import SamplingConfig

    conversations = [[{"role": "user", "content": q}] for q in PROBE_QUESTIONS]
    engine.generate(conversations[:1], SamplingConfig(max_tokens=4))
    start = time.perf_counter()
    outputs = engine.generate(conversations, SamplingConfig(max_tokens=max_tokens))
    seconds = time.perf_counter() - start
    completions = [o.completions[0] for o in outputs]
    return Probe(sum(c.num_tokens for c in completions), seconds, [c.text for c in completions])


def check_mode(mode: str) -> None:
    """A `generation.push` value that is not a push mode is a one-line error."""
    if mode not in PUSH_MODES:
        raise ValueError(f"generation.push={mode!r} is unknown; use one of {', '.join(PUSH_MODES)}")


def check_push_settings(mode: str, backend: str, training_mode: str, lora_r: int, max_lora_rank: int) -> None:
    """Refuse, when a fit starts, push settings that could only fail at the first push after a round of work."""
    if backend == "vllm" and training_mode != "full" and mode != "merged" and lora_r > max_lora_rank:
        raise ValueError(f"model.lora_r={lora_r} > generation.engine.max_lora_rank={max_lora_rank}: vLLM could not serve "
                         "the adapter; raise max_lora_rank or set generation.push: merged")


def static_choice(mode: str, training_mode: str, blocker: str | None) -> tuple[str | None, str]:
    """The choice known before any measurement: (``"weights"``/``"adapter"``/``"merged"``, why), or (None, why)
    when ``auto`` must measure. ``blocker`` is None when the adapter folds into dense weights, else why not."""
    check_mode(mode)
    if training_mode == "full":
        return "weights", "full fine-tuning: the full weights are pushed"
    if mode == "merged":
        if blocker is not None:
            raise ValueError(f"generation.push=merged: this adapter does not fold into dense weights ({blocker}); "
                             "use push: adapter or auto")
        return "merged", "push: merged (set in the config)"
    if mode == "adapter":
        return "adapter", "push: adapter (set in the config)"
    if blocker is not None:
        return "adapter", f"auto: served as an adapter because it does not fold into dense weights ({blocker})"
    return None, "auto: both ways are measured once"


def measured_choice(adapter: Probe, merged: Probe) -> tuple[str, str]:
    """``auto``'s pick from the two probes: merged when it decodes at least ``MERGED_GAIN`` times faster."""
    same = sum(a == b for a, b in zip(adapter.texts, merged.texts))
    ratio = merged.tokens_per_s / adapter.tokens_per_s if adapter.tokens_per_s > 0 else float("inf")
    facts = (f"probe: adapter {adapter.tokens_per_s:.1f} tok/s, merged {merged.tokens_per_s:.1f} tok/s "
             f"({ratio:.2f}x), identical greedy texts {same}/{len(adapter.texts)}")
    if ratio >= MERGED_GAIN:
        return "merged", f"auto: merged decodes faster; {facts}"
    return "adapter", f"auto: merging gains less than {MERGED_GAIN:.2f}x; {facts}"
