"""Prompt builders for the ReGenesis stages, the guideline selection and the judge gate.

Every builder returns a one-turn chat (``Conversation``); engines render it with the tokenizer's chat
template. The question is always shown through ``chat.format_question`` and the path stage asks for the
answer with ``chat.ANSWER_FORMAT``, so the paths end in the same ``\\boxed{}`` form that evaluation parses.
The reasoning path must read as a complete answer on its own, because the SFT record pairs it with the
plain evaluation prompt (``chat.sft_messages``), which shows neither the guideline nor the structure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from regenesis_pl.chat import ANSWER_FORMAT, format_question
from regenesis_pl.engines.base import Conversation
from regenesis_pl.method.guidelines import Guideline
from regenesis_pl.tasks.types import AnswerType, Question


def _user(text: str) -> Conversation:
    return [{"role": "user", "content": text}]


def hint_answer(question: Question) -> str:
    """How the gold answer is shown in a hint: the value, or "(B) option text" for multiple choice.

    Raises:
        ValueError: the question has no gold answer (hints need one).
    """
    if question.answer is None:
        raise ValueError(f"question {question.task}/{question.id}: no gold answer, so no hint can be given; "
                         "disable the hint pass (hint_stages=[]) or use gold-labelled questions")
    answer = question.answer.strip()
    if question.answer_type is AnswerType.MULTIPLE_CHOICE and answer in question.letters and answer:
        return f"({answer}) {question.choices[question.letters.index(answer)]}"
    return answer


def _strategy_block(guidelines: Sequence[Guideline]) -> str:
    if len(guidelines) == 1:
        return f"General reasoning strategy:\n{guidelines[0].text}"
    return "General reasoning strategies:\n" + "\n".join(f"- {g.text}" for g in guidelines)


def adapt_prompt(question: Question, guidelines: Sequence[Guideline], hint: bool = False) -> Conversation:
    """Stage 1: rewrite the general guideline(s) so they fit this problem, in one or two sentences.

    Args:
        question: The problem.
        guidelines: One seed guideline (paper) or a selection of two or three (released scripts).
        hint: Show the gold answer and ask not to work out the solution.
    """
    if not guidelines:
        raise ValueError(f"adapt_prompt for {question.task}/{question.id}: needs at least one guideline")
    noun = "strategy" if len(guidelines) == 1 else "strategies"
    hint_line = (f"The correct final answer is known to be {hint_answer(question)}. Do not work out the "
                 "solution; use this only to make the advice more pointed.\n\n") if hint else ""
    return _user(
        f"{_strategy_block(guidelines)}\n\n"
        f"Problem:\n{format_question(question)}\n\n"
        f"{hint_line}"
        f"Do not solve the problem. Rewrite the general {noun} above as advice aimed at this particular "
        "problem, in one or two sentences."
    )


def structure_prompt(question: Question, adapted: str, hint: bool = False) -> Conversation:
    """Stage 2: turn the adapted guideline into a short, actionable, step-by-step plan, without solving."""
    hint_line = (f"The correct final answer is known to be {hint_answer(question)}. Do not work out the "
                 "solution; plan the steps that would lead to it.\n\n") if hint else ""
    return _user(
        f"Problem:\n{format_question(question)}\n\n"
        f"Advice for this problem:\n{adapted.strip()}\n\n"
        f"{hint_line}"
        "Do not solve the problem. Following the advice, write a concise reasoning structure for it: a "
        "numbered list of concrete steps that someone could carry out to reach the answer."
    )


def path_prompt(question: Question, structure: str, hint: bool = False) -> Conversation:
    """Stage 3: solve step by step following the structure; final answer in ``\\boxed{}``.

    With ``hint``, the gold answer is shown and the model is told to explain the reasoning as if it had
    worked it out alone (the path is saved without this prompt, so it must stand on its own).
    """
    hint_line = (f"The correct final answer is {hint_answer(question)}. Write the reasoning that leads to it "
                 "as your own work; do not say that the answer was given to you.\n\n") if hint else ""
    return _user(
        f"Problem:\n{format_question(question)}\n\n"
        f"Reasoning structure to follow:\n{structure.strip()}\n\n"
        f"{hint_line}"
        "Solve the problem step by step, following the reasoning structure, and restate what you need from "
        f"the problem as you go. {ANSWER_FORMAT[question.answer_type]}"
    )


def selection_prompt(question: Question, guidelines: Sequence[Guideline]) -> Conversation:
    """Released-scripts variant: ask which two or three of the numbered guidelines fit this problem."""
    listing = "\n".join(f"{i}. {g.text}" for i, g in enumerate(guidelines, start=1))
    return _user(
        f"Numbered list of general reasoning strategies:\n{listing}\n\n"
        f"Problem:\n{format_question(question)}\n\n"
        "Do not solve the problem. Which two or three of the strategies above would help most with it? "
        "Reply with their numbers only, separated by commas."
    )


_NUMBER = re.compile(r"(?<![\d.])\d+(?!\.?\d)")


def parse_selection(text: str, num_guidelines: int, max_pick: int = 3) -> list[int]:
    """0-based guideline indices named in a selection reply: distinct, in order, in range, at most ``max_pick``.

    Numbers outside ``1..num_guidelines`` are ignored; an empty list means the reply named none.
    """
    picked: list[int] = []
    for match in _NUMBER.finditer(text):
        number = int(match.group(0))
        if 1 <= number <= num_guidelines and number - 1 not in picked:
            picked.append(number - 1)
            if len(picked) == max_pick:
                break
    return picked


def judge_prompt(question: Question, path: str) -> Conversation:
    """Judge gate (released scripts): does the solution's final answer agree with the gold answer?"""
    return _user(
        f"Problem:\n{format_question(question)}\n\n"
        f"Reference answer: {hint_answer(question)}\n\n"
        f"Proposed solution:\n{path.strip()}\n\n"
        "Does the final answer of the proposed solution agree with the reference answer? "
        "Reply with yes or no only."
    )


_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_judgement(text: str) -> bool | None:
    """True for a reply whose first yes/no word is "yes", False for "no", None when it has neither."""
    match = _YES_NO.search(text)
    return None if match is None else match.group(1).lower() == "yes"
