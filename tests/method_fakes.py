"""A scripted engine for the method unit tests (prompt plumbing only; real generation is tested elsewhere)."""

from __future__ import annotations

import re

from regenesis_pl.engines.base import Completion, RequestOutput
from regenesis_pl.tasks.types import AnswerType, Question


def stage_of(conversation) -> str:
    """Which stage a prompt belongs to, from the fixed wording of the prompt builders."""
    if len(conversation) > 1:
        return "cot"
    text = conversation[-1]["content"]
    for marker, stage in (("Numbered list of general reasoning", "select"), ("General reasoning strateg", "adapt"),
                          ("Advice for this problem:", "structure"), ("Reasoning structure to follow:", "path"),
                          ("Reference answer:", "judge")):
        if text.startswith(marker) or f"\n{marker}" in text:
            return stage
    raise AssertionError(f"unknown prompt: {text[:80]!r}")


class ScriptedEngine:
    """Answers each request with ``respond(stage, conversation, seed, sample_index) -> text`` and logs calls."""

    name = "scripted"
    tokenizer = None
    weights_id = "scripted-0"

    def __init__(self, respond):
        self.respond = respond
        self.calls: list[dict] = []

    def generate(self, conversations, sampling, request_seeds=None, progress=None, on_finished=None):
        stages = {stage_of(c) for c in conversations}
        assert len(stages) == 1, f"one engine call mixed stages {stages}"
        self.calls.append({"stage": stages.pop(), "conversations": list(conversations), "sampling": sampling,
                           "seeds": list(request_seeds), "progress": progress})
        outputs = []
        for conv, seed in zip(conversations, request_seeds):
            completions = []
            for i in range(sampling.n):
                text = self.respond(self.calls[-1]["stage"], conv, seed, i)
                n_tok = len(text.split())
                finish = "length" if n_tok >= sampling.max_tokens else "stop"
                completions.append(Completion(text=text, num_tokens=n_tok, finish_reason=finish))
            outputs.append(RequestOutput(completions=completions, prompt_tokens=len(conv[-1]["content"].split())))
        return outputs


def question_in(conversation) -> str:
    """The problem text shown in a stage prompt (first line after "Problem:")."""
    match = re.search(r"Problem:\n(.*)", conversation[-1]["content"])
    return match.group(1) if match else conversation[-1]["content"]


def make_questions(n: int = 4) -> list[Question]:
    """n addition questions "What is i + 10?" with gold answer i + 10."""
    return [Question(id=f"q{i}", task="toy_add", text=f"What is {i} + 10?", answer_type=AnswerType.NUMERIC,
                     answer=str(i + 10)) for i in range(n)]


class ShuffledStream(ScriptedEngine):
    """A ``ScriptedEngine`` that also streams (``engines.streaming``): it finishes ONE pending request at a time,
    picked in a seeded random order, and adds its follow-ups at once, so stages of different questions
    interleave the way a busy engine would finish them. ``finished`` logs each request's stage in finishing order,
    with a "+hint" suffix when its prompt shows the gold answer."""

    def __init__(self, respond, order_seed: int = 0):
        super().__init__(respond)
        import random

        self.rng = random.Random(order_seed)
        self.finished: list[str] = []

    def stream(self, requests, follow_up, progress=None):
        pending = list(enumerate(requests))
        total = len(pending)
        while pending:
            index, request = pending.pop(self.rng.randrange(len(pending)))
            stage = stage_of(request.conversation)
            hinted = "correct final answer is" in request.conversation[-1]["content"]
            self.finished.append(stage + ("+hint" if hinted else ""))
            completions = []
            for i in range(request.sampling.n):
                text = self.respond(stage, request.conversation, request.seed, i)
                n_tok = len(text.split())
                completions.append(Completion(text=text, num_tokens=n_tok,
                                              finish_reason="length" if n_tok >= request.sampling.max_tokens else "stop"))
            out = RequestOutput(completions=completions, prompt_tokens=len(request.conversation[-1]["content"].split()))
            more = list(follow_up([(index, out)]))
            pending += [(total + k, r) for k, r in enumerate(more)]
            total += len(more)
        return total
