"""The paper's datasets on the Hugging Face hub: where each lives, which split plays train/test, its
answer type and how a row becomes a question.

| name          | hub id (config)                 | train / test split       | answer type     | transform |
|---------------|---------------------------------|--------------------------|-----------------|-----------|
| gsm8k         | openai/gsm8k (main)             | train / test             | numeric         | answer after "####", rationale before it |
| numglue       | HHazard/numglue                 | train / test             | numeric         | rows whose answer is not a number are skipped (counted) |
| arc_challenge | allenai/ai2_arc (ARC-Challenge) | train / test             | multiple choice | choices.text, answerKey via choices.label |
| reclor        | metaeval/reclor                 | train / validation       | multiple choice | context + question; answers; label index (test labels are hidden) |
| strategyqa    | ChilleD/StrategyQA              | train / test             | yes/no          | answer bool; facts joined as rationale |
| asdiv         | EleutherAI/asdiv                | validation / validation  | numeric         | body + question; number before " (unit)" |
| svamp         | ChilleD/SVAMP                   | train / test             | numeric         | Body + Question; Answer float |
| aqua          | deepmind/aqua_rat (raw)         | train / test             | multiple choice | options "A)21" -> "21"; correct letter; rationale |
| openbookqa    | allenai/openbookqa (main)       | train / test             | multiple choice | question_stem; choices.text; answerKey |
| commonsenseqa | tau/commonsense_qa              | train / validation       | multiple choice | choices.text; answerKey (test labels are hidden) |
| anli          | facebook/anli                   | train_r1 / test_r1       | multiple choice | premise + hypothesis; entailment/neutral/contradiction |
| bbh/<subtask> | lukaemon/bbh (<subtask>)        | test / test              | detected        | "(A)" targets -> options parsed from the input |
| bbh           | all 27 subtasks above, each named bbh/<subtask>                                                         |

OOD-only datasets (asdiv, bbh) use one split for both names: they are evaluation sets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from regenesis_pl.tasks.answers import parse_number
from regenesis_pl.tasks.olmo import gsm8k_rationale
from regenesis_pl.tasks.types import AnswerType

Row = Mapping[str, Any]
_BBH_OPTION_RE = re.compile(r"^\(([A-Z])\)\s*(.+)$", re.MULTILINE)


def gsm8k_row(row: Row) -> dict:
    solution = row["answer"]
    return {"question": row["question"], "answer": solution.rsplit("####", 1)[-1].strip(),
            "rationale": gsm8k_rationale(solution)}


def numglue_row(row: Row) -> dict | None:
    answer = str(row["answer"]).strip()
    return {"question": row["question"], "answer": answer} if parse_number(answer) is not None else None


def labeled_choices_row(row: Row, question_key: str = "question") -> dict:
    """ARC / OpenBookQA / CommonsenseQA shape: ``choices = {"text": [...], "label": [...]}``, ``answerKey``."""
    out = {"question": row[question_key], "choices": row["choices"], "answer": row["answerKey"]}
    if "id" in row:
        out["id"] = row["id"]
    return out


def reclor_row(row: Row) -> dict:
    return {"question": f"{row['context'].strip()}\n\n{row['question'].strip()}", "choices": list(row["answers"]),
            "answer": int(row["label"]), "id": row.get("id_string")}


def strategyqa_row(row: Row) -> dict:
    facts = row.get("facts")
    rationale = " ".join(facts) if isinstance(facts, (list, tuple)) else facts
    return {"question": row["question"], "answer": bool(row["answer"]), "rationale": rationale,
            "id": row.get("qid")}


def asdiv_row(row: Row) -> dict:
    return {"question": f"{row['body'].strip()} {row['question'].strip()}",
            "answer": str(row["answer"]).split("(")[0].strip()}


def svamp_row(row: Row) -> dict:
    body, question = row["Body"].strip(), row["Question"].strip()
    return {"question": f"{body} {question}", "answer": row["Answer"], "id": row.get("ID")}


def aqua_row(row: Row) -> dict:
    options = [re.sub(r"^\s*[A-E]\s*\)\s*", "", str(o)).strip() for o in row["options"]]
    return {"question": row["question"], "choices": options, "answer": row["correct"].strip(),
            "rationale": row.get("rationale")}


ANLI_LABELS = ("entailment", "neutral", "contradiction")


def anli_row(row: Row) -> dict:
    text = (f"Premise: {row['premise'].strip()}\nHypothesis: {row['hypothesis'].strip()}\n"
            "Does the premise entail the hypothesis, contradict it, or neither (neutral)?")
    return {"question": text, "choices": list(ANLI_LABELS), "answer": int(row["label"]), "id": row.get("uid"),
            "rationale": row.get("reason") or None}


def bbh_row(row: Row) -> dict:
    """BBH rows are ``input``/``target``; a target like "(B)" makes the options in the input the choices."""
    text, target = row["input"], str(row["target"]).strip()
    options = _BBH_OPTION_RE.findall(text)
    m = re.fullmatch(r"\(([A-Z])\)", target)
    if m and options:
        head = text.split("Options:")[0].strip() if "Options:" in text else text
        return {"question": head, "choices": [t.strip() for _, t in options], "answer": m.group(1)}
    return {"question": text, "answer": target}


@dataclass(frozen=True)
class HubSpec:
    """One paper dataset on the hub.

    Attributes:
        path: Hub id.
        config: Hub config name, or None.
        splits: Our split name ("train"/"test") -> the hub split.
        answer_type: The answer type, or None to detect it from the rows (BBH).
        transform: Row -> row dict with question/answer/choices/rationale/id keys (or None to skip).
    """

    path: str
    config: str | None
    splits: dict[str, str]
    answer_type: AnswerType | None
    transform: Callable[[Row], dict | None]
    notes: str = field(default="", compare=False)


HUB_DATASETS: dict[str, HubSpec] = {
    "gsm8k": HubSpec("openai/gsm8k", "main", {"train": "train", "test": "test"}, AnswerType.NUMERIC, gsm8k_row),
    "numglue": HubSpec("HHazard/numglue", None, {"train": "train", "test": "test"}, AnswerType.NUMERIC,
                       numglue_row, "non-numeric NumGLUE types are skipped"),
    "arc_challenge": HubSpec("allenai/ai2_arc", "ARC-Challenge", {"train": "train", "test": "test"},
                             AnswerType.MULTIPLE_CHOICE, labeled_choices_row),
    "reclor": HubSpec("metaeval/reclor", None, {"train": "train", "test": "validation"},
                      AnswerType.MULTIPLE_CHOICE, reclor_row, "test labels are hidden: validation is the test"),
    "strategyqa": HubSpec("ChilleD/StrategyQA", None, {"train": "train", "test": "test"}, AnswerType.YES_NO,
                          strategyqa_row),
    "asdiv": HubSpec("EleutherAI/asdiv", None, {"train": "validation", "test": "validation"},
                     AnswerType.NUMERIC, asdiv_row, "evaluation only"),
    "svamp": HubSpec("ChilleD/SVAMP", None, {"train": "train", "test": "test"}, AnswerType.NUMERIC, svamp_row),
    "aqua": HubSpec("deepmind/aqua_rat", "raw", {"train": "train", "test": "test"}, AnswerType.MULTIPLE_CHOICE,
                    aqua_row),
    "openbookqa": HubSpec("allenai/openbookqa", "main", {"train": "train", "test": "test"},
                          AnswerType.MULTIPLE_CHOICE, lambda r: labeled_choices_row(r, "question_stem")),
    "commonsenseqa": HubSpec("tau/commonsense_qa", None, {"train": "train", "test": "validation"},
                             AnswerType.MULTIPLE_CHOICE, labeled_choices_row,
                             "test labels are hidden: validation is the test"),
    "anli": HubSpec("facebook/anli", None, {"train": "train_r1", "test": "test_r1"}, AnswerType.MULTIPLE_CHOICE,
                    anli_row, "round 1"),
}


BBH_SUBTASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation", "snarks", "sports_understanding",
    "temporal_sequences", "tracking_shuffled_objects_five_objects", "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects", "web_of_lies", "word_sorting",
)


def hub_spec(name: str) -> HubSpec | None:
    """The spec of a paper dataset; ``bbh/<subtask>`` gives the BBH subtask (answer type detected)."""
    if name.startswith("bbh/") and len(name) > 4:
        return HubSpec("lukaemon/bbh", name[4:], {"train": "test", "test": "test"}, None, bbh_row,
                       "evaluation only")
    return HUB_DATASETS.get(name)
