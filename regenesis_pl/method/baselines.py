"""The baselines the paper compares: STaR, LMSI and fine-tuning on the dataset's own rationales (GT-SFT).

STaR and LMSI sample few-shot chain-of-thought paths; the exemplars below were written for this package
(numeric, multiple choice, yes/no) and shown as earlier chat turns in the same user format as evaluation,
so the last turn is exactly the evaluation prompt. Filtering is shared with ReGenesis (``filters``):
STaR keeps gold-matching paths and rationalizes failures with the gold answer as a hint; LMSI keeps paths
that agree with the majority answer and never looks at gold. GT-SFT needs no engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from regenesis_pl.chat import user_prompt
from regenesis_pl.engines.base import Conversation, Request, SamplingConfig
from regenesis_pl.hashing import stable_seed
from regenesis_pl.method.flows import Flow
from regenesis_pl.method.prompts import hint_answer
from regenesis_pl.method.records import Candidate, Verdict
from regenesis_pl.tasks.types import AnswerType, Question

FEWSHOT_ID = "fewshot"

EXEMPLARS: tuple[tuple[Question, str], ...] = (
    (Question(id="ex1", task="fewshot", answer_type=AnswerType.NUMERIC, answer="18",
              text="A baker fills 4 trays with 12 muffins each and then sells 30 muffins. "
                   "How many muffins does she have left?"),
     ("Each tray holds 12 muffins, so 4 trays hold 4 * 12 = 48 muffins.\n"
      "She sells 30 of them, which leaves 48 - 30 = 18 muffins.\n"
      "The answer is \\boxed{18}.")),
    (Question(id="ex2", task="fewshot", answer_type=AnswerType.MULTIPLE_CHOICE, answer="C",
              text="Which of these gives off its own light?",
              choices=("a mirror", "the Moon", "a candle flame", "a glass window")),
     ("Something that gives off its own light has to produce the light itself.\n"
      "A mirror and the Moon only reflect light that comes from elsewhere, and a window only lets light through.\n"
      "A candle flame produces light as it burns, so it is the only real light source here.\n"
      "The answer is \\boxed{C}.")),
    (Question(id="ex3", task="fewshot", answer_type=AnswerType.YES_NO, answer="no",
              text="Could a person walk from New York to London in one day?"),
     ("New York and London are separated by the Atlantic Ocean, more than 5,000 km of open water.\n"
      "People cannot walk on water, and even on land a person covers only about 5 km in an hour.\n"
      "So the trip cannot be walked in a single day.\n"
      "The answer is \\boxed{no}.")),
    (Question(id="ex4", task="fewshot", answer_type=AnswerType.NUMERIC, answer="4.5",
              text="At dawn the temperature was -3 degrees. By noon it had risen by 7.5 degrees. "
                   "What was the temperature at noon?"),
     ("Start from the dawn temperature, -3 degrees.\n"
      "A rise of 7.5 degrees gives -3 + 7.5 = 4.5 degrees.\n"
      "The answer is \\boxed{4.5}.")),
)


def fewshot_messages(question: Question, hint: bool = False) -> Conversation:
    """Few-shot chat: each exemplar as a user/assistant pair, then the question's evaluation prompt.

    With ``hint`` (STaR rationalization), the last turn also states the gold answer and asks for reasoning
    that does not mention it; the generated path is saved without this turn.
    """
    messages: Conversation = []
    for exemplar, solution in EXEMPLARS:
        messages += [{"role": "user", "content": user_prompt(exemplar)},
                     {"role": "assistant", "content": solution}]
    last = user_prompt(question)
    if hint:
        last += (f"\n\nThe correct final answer is {hint_answer(question)}. Explain the reasoning that leads to "
                 "it as your own work, without saying that the answer was given.")
    messages.append({"role": "user", "content": last})
    return messages


def cot_flow(questions: Sequence[Question], sampling: SamplingConfig, method: str = "star", round: int = 0,
             hint: bool = False, seed: int = 0) -> Flow[list[Candidate]]:
    """Few-shot chain-of-thought paths: one step (see ``method.flows``), ``sampling.n`` paths per question.

    Args:
        questions: Questions to sample for.
        sampling: Sampling settings (``n`` paths per question).
        method: Recorded as ``Candidate.method`` ("star" or "lmsi").
        round: Self-improvement round.
        hint: STaR rationalization: show the gold answer (candidates get ``hint=True``).
        seed: Base seed of the round.
    """
    if not questions:
        return []
    label = "rationalize" if hint else "cot"
    outputs = yield [Request(fewshot_messages(q, hint), sampling, stable_seed(seed, round, method, "cot", q.id, int(hint)),
                             label) for q in questions]
    candidates = []
    for q, out in zip(questions, outputs):
        for i, c in enumerate(out.completions):
            candidates.append(Candidate(
                question_id=q.id, task=q.task, method=method, round=round, guideline_id=FEWSHOT_ID,
                sample_index=i, hint=hint, path=c.text.strip(), tokens=c.num_tokens, path_tokens=c.num_tokens,
                meta={"finish": {"path": c.finish_reason}, "hint_stages": ["path"] if hint else []}))
    return candidates


def gt_path(question: Question) -> str:
    """The GT-SFT target: the dataset's rationale ending in ``\\boxed{gold}`` (unless it already has a box), or
    the bare answer sentence when the question has no rationale."""
    rationale = (question.rationale or "").strip()
    if "\\boxed{" in rationale:
        return rationale
    answer = f"The answer is \\boxed{{{question.answer.strip()}}}."
    return f"{rationale}\n{answer}" if rationale else answer


def gt_candidates(questions: Sequence[Question], round: int = 0, tokenizer=None,
                  without_rationale: str = "answer") -> tuple[list[Candidate], int]:
    """GT-SFT: one kept candidate per question with a gold answer, the paper's fine-tune-on-ground-truth baseline.

    Args:
        questions: Questions (those without a gold answer are skipped and counted).
        round: Round recorded on the candidates.
        tokenizer: When given, ``path_tokens`` is the path's length in its tokens; else 0.
        without_rationale: A question without a rationale trains on its bare answer (``"answer"``, guideline id
            ``answer``) or is skipped and counted (``"skip"``).

    Returns:
        The candidates (verdict CORRECT, kept) and the number of skipped questions.
    """
    if without_rationale not in ("answer", "skip"):
        raise ValueError(f"synthesis.gt_without_rationale={without_rationale!r}: choose 'answer' or 'skip'")
    candidates, skipped = [], 0
    for q in questions:
        has_rationale = bool(q.rationale and q.rationale.strip())
        if q.answer is None or (not has_rationale and without_rationale == "skip"):
            skipped += 1
            continue
        path = gt_path(q)
        source = "rationale" if has_rationale else "answer"
        n_tokens = len(tokenizer(path, add_special_tokens=False)["input_ids"]) if tokenizer is not None else 0
        candidates.append(Candidate(question_id=q.id, task=q.task, method="gt", round=round,
                                    guideline_id=source, path=path, answer=q.answer.strip(),
                                    verdict=Verdict.CORRECT, kept=True, path_tokens=n_tokens,
                                    meta={"guideline_ids": [source], "boxed": True}))
    return candidates, skipped
