"""BIG-bench ``task.json`` files: examples of ``input`` with ``target`` and/or ``target_scores``.

The answer type of a task is decided over all its examples:

- yes/no when every example's ``target_scores`` are exactly Yes/No (or True/False); the gold answer is
  the option with the top score and the rest of ``target`` (strategyqa: "Yes. <facts>") is the rationale;
- numeric when every example has a ``target`` (a string or a list of accepted strings) that holds a plain
  number (arithmetic, object_counting: ``["three", "3"]`` gives "3"); distractor ``target_scores`` are
  ignored;
- multiple choice when every example has ``target_scores``: the options are its keys in file order and
  the gold letter is the single top-scoring key (elementary_math_qa);
- free text otherwise (the first ``target``).

A task folder without examples whose sub-folders hold ``task.json`` files (arithmetic,
elementary_math_qa) loads as all its subtasks, with ids ``<subtask>/<index>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from regenesis_pl.tasks.answers import parse_number
from regenesis_pl.tasks.rows import RawQuestion, to_questions
from regenesis_pl.tasks.types import AnswerType, Question

_YES_NO_KEYS = ({"yes", "no"}, {"true", "false"})


def _targets(example: dict) -> list[str]:
    target = example.get("target")
    if target is None:
        return []
    return [str(t) for t in target] if isinstance(target, list) else [str(target)]


def _is_yes_no(example: dict) -> bool:
    scores = example.get("target_scores")
    return isinstance(scores, dict) and {k.strip().lower() for k in scores} in _YES_NO_KEYS


def _number_target(example: dict) -> str | None:
    return next((t for t in _targets(example) if parse_number(t) is not None), None)


def _top_key(scores: dict, where: str) -> str:
    best = max(scores.values())
    tops = [k for k, v in scores.items() if v == best]
    if len(tops) != 1 or best <= 0:
        raise ValueError(f"{where}: target_scores has no single correct option ({scores})")
    return tops[0]


def detect_answer_type(examples: list[dict]) -> AnswerType:
    """The answer type shared by a task's examples (see the module docstring)."""
    if examples and all(_is_yes_no(e) for e in examples):
        return AnswerType.YES_NO
    if examples and all(_number_target(e) is not None for e in examples):
        return AnswerType.NUMERIC
    if examples and all(isinstance(e.get("target_scores"), dict) and e["target_scores"] for e in examples):
        return AnswerType.MULTIPLE_CHOICE
    return AnswerType.FREE_TEXT


def _raw(example: Any, index: int, where: str, kind: AnswerType, id_prefix: str) -> RawQuestion:
    if not isinstance(example, dict) or not isinstance(example.get("input"), str) or not example["input"].strip():
        raise ValueError(f"{where}: example has no 'input' text")
    qid = f"{id_prefix}{index}"
    targets = _targets(example)
    if kind is AnswerType.YES_NO:
        answer = _top_key(example["target_scores"], where)
        rationale = None
        if targets and targets[0].lower().startswith(answer.lower()):
            rationale = targets[0][len(answer):].lstrip(" .:,").strip() or None
        return RawQuestion(id=qid, text=example["input"], answer=answer, rationale=rationale, source=where)
    if kind is AnswerType.NUMERIC:
        return RawQuestion(id=qid, text=example["input"], answer=_number_target(example), source=where)
    if kind is AnswerType.MULTIPLE_CHOICE:
        scores = example["target_scores"]
        keys = list(scores)
        return RawQuestion(id=qid, text=example["input"], answer=keys.index(_top_key(scores, where)),
                           choices=tuple(str(k) for k in keys), source=where)
    if not targets:
        raise ValueError(f"{where}: example has neither 'target' nor 'target_scores'")
    return RawQuestion(id=qid, text=example["input"], answer=targets[0], source=where)


def _task_file(path: Path) -> Path:
    if path.is_dir():
        path = path / "task.json"
    if not path.is_file():
        raise FileNotFoundError(f"BIG-bench task file {path} does not exist; run `regenesis prepare data "
                                "--source bigbench --tasks <task>` or check the path")
    return path


def read_task(path: str | os.PathLike) -> dict:
    """The parsed ``task.json`` (one-line errors for missing or invalid files)."""
    path = _task_file(Path(path).expanduser())
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise TypeError(f"{path}: a BIG-bench task file must hold a JSON object")
    return data


def subtask_dirs(path: str | os.PathLike) -> list[Path]:
    """Sub-folders of a task folder that hold their own ``task.json``, sorted by name."""
    folder = Path(path).expanduser()
    folder = folder.parent if folder.is_file() else folder
    return sorted(p for p in folder.iterdir() if (p / "task.json").is_file()) if folder.is_dir() else []


def load_bigbench_task(path: str | os.PathLike, task: str | None = None,
                       answer_type: AnswerType | str | None = None) -> list[Question]:
    """Questions of a BIG-bench task (a ``task.json`` file or its folder; a parent folder loads all
    subtasks).

    Args:
        path: ``.../benchmark_tasks/<task>`` (or ``.../<task>/<subtask>``), or the ``task.json`` itself.
        task: Task name given to the questions (default: the task's folder name).
        answer_type: Force an answer type; detected from the examples when None.
    """
    path = Path(path).expanduser()
    file = _task_file(path)
    task = task or file.parent.name
    data = read_task(file)
    examples = data.get("examples")
    if not examples:
        subs = subtask_dirs(file.parent)
        if not subs:
            raise ValueError(f"{file}: task has no examples and no subtask folders")
        out: list[Question] = []
        for sub in subs:
            out.extend(_load_examples(sub / "task.json", read_task(sub), task, answer_type, f"{sub.name}/"))
        return out
    return _load_examples(file, data, task, answer_type, "")


def _load_examples(file: Path, data: dict, task: str, answer_type, id_prefix: str) -> list[Question]:
    examples = data.get("examples")
    if not isinstance(examples, list) or not examples:
        raise ValueError(f"{file}: no 'examples' list")
    kind = AnswerType(answer_type) if answer_type else detect_answer_type(examples)
    raws = [_raw(e, i, f"{file}:example {i}", kind, id_prefix) for i, e in enumerate(examples)]
    return to_questions(raws, task, kind)
