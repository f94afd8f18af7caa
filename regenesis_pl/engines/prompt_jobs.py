"""What both backends do the same way before and after generating: tokenizer loading, prompt token ids,
one seeded job per completion, collecting completions per request, stop-string truncation, dtype names.

Keeping this in one place is what makes the two engines see identical prompt tokens and identical seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from regenesis_pl.chat import render_prompt
from regenesis_pl.engines.base import Completion, Conversation, RequestOutput, SamplingConfig
from regenesis_pl.hashing import completion_seed, resolve_request_seeds


@dataclass(frozen=True)
class Job:
    """One completion to generate: completion ``sample`` of request ``request``."""

    request: int
    sample: int
    prompt_ids: tuple[int, ...]
    seed: int


def load_chat_tokenizer(model: str, trust_remote_code: bool = False):
    """Load a model's tokenizer and insist on a chat template (one-line errors for a missing one / no hub)."""
    from transformers import AutoTokenizer

    from regenesis_pl.model_source import hub_load_error

    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except OSError as err:
        if Path(model).is_dir():
            raise
        raise hub_load_error(model, err) from err
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"model {model!r} has no chat template (no chat_template in tokenizer_config.json or "
                         "chat_template.jinja); use an instruct/chat model or add a chat template")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_prompts(tokenizer, conversations: Sequence[Conversation], max_model_len: int,
                         first: int = 0) -> list[list[int]]:
    """Prompt token ids of each conversation: ``render_prompt`` text, tokenized without extra special tokens
    (the chat template already writes them). Errors name a request by its number, counted from ``first``."""
    out = []
    for i, conversation in enumerate(conversations, first):
        ids = tokenizer(render_prompt(tokenizer, conversation), add_special_tokens=False)["input_ids"]
        if len(ids) >= max_model_len:
            raise ValueError(f"request {i}: prompt has {len(ids)} tokens, which leaves no room to generate within "
                             f"max_model_len={max_model_len}; shorten the prompt or raise max_model_len")
        out.append(list(ids))
    return out


def make_jobs(prompt_ids: Sequence[Sequence[int]], sampling: SamplingConfig,
              request_seeds: Sequence[int] | None, first: int = 0) -> list[Job]:
    """One job per completion, request-major; request seeds as ``resolve_request_seeds`` gives them. The
    requests are numbered from ``first`` (a stream numbers the requests it adds after those it has)."""
    seeds = resolve_request_seeds(len(prompt_ids), sampling.seed, request_seeds)
    jobs = []
    for i, ids in enumerate(prompt_ids):
        base = seeds[i]
        for j in range(sampling.n):
            jobs.append(Job(request=first + i, sample=j, prompt_ids=tuple(ids), seed=completion_seed(base, j)))
    return jobs


class OutputCollector:
    """Completions of jobs, in any order, into one ``RequestOutput`` per request; ``add`` says when a request
    has all its completions (what an engine reports through ``on_finished``). ``extend`` adds requests to a
    running collection (a stream's follow-ups)."""

    def __init__(self, prompt_ids: Sequence[Sequence[int]] = (), n: int = 1) -> None:
        self.outputs: list[RequestOutput] = []
        self._left: list[int] = []
        self.extend(prompt_ids, [n] * len(prompt_ids))

    def extend(self, prompt_ids: Sequence[Sequence[int]], ns: Sequence[int]) -> None:
        """Add requests (numbered after the existing ones) with ``ns[i]`` completions each."""
        self.outputs += [RequestOutput(completions=[None] * n, prompt_tokens=len(ids)) for ids, n in zip(prompt_ids, ns)]
        self._left += list(ns)

    def add(self, job: Job, completion: Completion) -> tuple[int, RequestOutput] | None:
        """Place ``completion``; ``(request, output)`` when that was the request's last one, else None."""
        self.outputs[job.request].completions[job.sample] = completion
        self._left[job.request] -= 1
        return (job.request, self.outputs[job.request]) if self._left[job.request] == 0 else None


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text up to the earliest stop string (excluded) and whether one was found."""
    cut = min((pos for pos in (text.find(s) for s in stop if s) if pos >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def engine_dtype(dtype: str, cuda: bool) -> str:
    """"auto" -> float32 on CPU (no fast bf16 there), bfloat16 on CUDA; explicit names are checked."""
    name = dtype.strip().lower()
    if name == "auto":
        return "bfloat16" if cuda else "float32"
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype={dtype!r} is not supported; use 'auto', 'float32', 'bfloat16' or 'float16'")
    return name
