"""Loading questions from local files and Hugging Face datasets.

Local files: ``.jsonl`` (one object per line), ``.json`` (a list of objects, or an object with an
``examples``/``data``/``rows`` list; a BIG-bench ``task.json`` is recognized and read by ``bigbench.py``),
``.parquet``, and their ``.gz`` forms for JSON. Files written by ``regenesis prepare data`` hold
``Question.to_dict()`` rows and load back as they are.

Hugging Face: a hub id through ``datasets.load_dataset`` or a ``save_to_disk`` folder through
``datasets.load_from_disk``; ``datasets`` is imported only when used.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from regenesis_pl.tasks.rows import FieldMap, RawQuestion, map_row, rows_to_questions, to_questions
from regenesis_pl.tasks.types import AnswerType, Question

QUESTION_KEYS = frozenset({"id", "task", "text", "answer_type"})
Transform = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        return suffixes[-2] if len(suffixes) > 1 else ""
    return suffixes[-1] if suffixes else ""


def read_rows(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """``(where, row)`` pairs of a local data file, ``where`` being ``file:line`` (or ``file:row N``).

    Raises FileNotFoundError for a missing file and a one-line ValueError for an empty file, invalid
    JSON (with its line) or an unsupported format.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist; check the path or run "
                                "`regenesis prepare data`")
    kind = _suffix(path)
    rows: list[tuple[str, dict]] = []
    if kind == ".jsonl":
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object") from None
    elif kind == ".json":
        with _open_text(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if isinstance(data, dict):
            key = next((k for k in ("examples", "data", "rows") if isinstance(data.get(k), list)), None)
            if key is None:
                raise ValueError(f"{path}: JSON object without an 'examples', 'data' or 'rows' list; "
                                 "use a list of row objects")
            data = data[key]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of row objects, got {type(data).__name__}")
        rows = [(f"{path}:item {i + 1}", row) for i, row in enumerate(data)]
    elif kind == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows = [(f"{path}:row {i + 1}", row) for i, row in enumerate(table.to_pylist())]
    else:
        raise ValueError(f"{path}: unsupported data file type {kind or '(none)'!r}; use .jsonl, .json, "
                         ".parquet (or .jsonl.gz/.json.gz)")
    if not rows:
        raise ValueError(f"{path}: the file holds no rows")
    return rows


def is_bigbench_file(path: Path) -> bool:
    """Whether a JSON file is a BIG-bench task definition (has ``examples`` with ``input``, or subtasks)."""
    if _suffix(path) != ".json":
        return False
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError:
            return False
    return isinstance(data, dict) and ("canary" in data or (
        isinstance(data.get("examples"), list) and data["examples"]
        and isinstance(data["examples"][0], dict) and "input" in data["examples"][0]))


def load_file(path: str | os.PathLike, task: str | None = None, fields: Mapping[str, str | None] | None = None,
              answer_type: AnswerType | str | None = None) -> list[Question]:
    """Questions from a local file (see the module docstring for formats).

    Args:
        path: The file.
        task: Task name for the questions (default: the file name without suffixes; for BIG-bench the
            task folder's name).
        fields: Column mapping, keys question/answer/choices/rationale/id (see ``FieldMap``).
        answer_type: Force an answer type; inferred from the rows when None.
    """
    path = Path(path).expanduser()
    if path.is_dir() or path.name == "task.json" or (path.is_file() and is_bigbench_file(path)):
        from regenesis_pl.tasks.bigbench import load_bigbench_task

        return load_bigbench_task(path, task=task, answer_type=answer_type)
    task = task or path.name.split(".")[0]
    rows = read_rows(path)
    if fields is None and all(QUESTION_KEYS <= set(r) for _, r in rows[:1]):
        return [_prepared_question(where, row) for where, row in rows]
    return rows_to_questions(rows, task, fields, answer_type)


def _prepared_question(where: str, row: dict) -> Question:
    try:
        return Question.from_dict(row)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: not a valid Question row ({e})") from None


# --- Hugging Face datasets --------------------------------------------------------------------------

def open_hf_dataset(name_or_path: str, split: str, config: str | None = None):
    """A ``datasets.Dataset`` split from a ``save_to_disk`` folder or a hub id (one-line errors)."""
    import datasets

    local = Path(name_or_path).expanduser()
    if local.exists():
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{local}: no split {split!r}; it has {sorted(ds)}")
            ds = ds[split]
        return ds
    try:
        return datasets.load_dataset(name_or_path, config, split=split)
    except Exception as e:  # noqa: BLE001 - an unreachable hub surfaces as many exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load Hugging Face dataset {name_or_path!r} (config {config!r}, split "
                         f"{split!r}): {first}; without hub access run `regenesis prepare data` and use a "
                         "prepared task, or pass a local path") from None


def questions_from_dataset(ds, task: str, fields: Mapping[str, str | None] | None = None,
                           answer_type: AnswerType | str | None = None, transform: Transform | None = None,
                           source: str = "dataset") -> list[Question]:
    """Questions from a ``datasets.Dataset`` (or any sequence of row dicts).

    Args:
        ds: The rows.
        task: Task name given to the questions.
        fields: Column mapping applied after ``transform`` (see ``FieldMap``).
        answer_type: Force an answer type; inferred when None.
        transform: Optional per-row function returning a new row dict (for the mapping), or None to
            skip the row; skipped rows are counted in a log line.
        source: Label used in ``Question.source`` and errors, e.g. "openai/gsm8k:test".
    """
    fmap, explicit = FieldMap.from_mapping(fields)
    columns = getattr(ds, "column_names", None)
    if transform is None and columns is not None:
        required = explicit | {"question"} | ({"answer"} if fmap.answer is not None else set())
        missing = [f"{part}={getattr(fmap, part)!r}" for part in sorted(required)
                   if getattr(fmap, part) not in columns]
        if missing:
            raise ValueError(f"{source}: field mapping names missing column(s) {', '.join(missing)}; "
                             f"columns are {columns}")
    raws: list[RawQuestion] = []
    skipped = 0
    for i, row in enumerate(ds):
        where = f"{source}:row {i + 1}"
        if transform is not None:
            row = transform(row)
            if row is None:
                skipped += 1
                continue
        raws.append(map_row(row, fmap, explicit, i, where))
    if skipped:
        logging.getLogger(__name__).warning("%s: skipped %d of %d rows the transform rejected",
                                            source, skipped, skipped + len(raws))
    if not raws:
        raise ValueError(f"{source}: no usable rows")
    return to_questions(raws, task, answer_type)


def load_hf(name_or_path: str, split: str, task: str | None = None, config: str | None = None,
            fields: Mapping[str, str | None] | None = None, answer_type: AnswerType | str | None = None,
            transform: Transform | None = None) -> list[Question]:
    """Questions from a Hugging Face dataset (hub id or ``save_to_disk`` folder).

    Args:
        name_or_path: Hub id ("openai/gsm8k") or a local folder written by ``save_to_disk``.
        split: Split name ("train", "test", "validation", ...).
        task: Task name (default: the last part of ``name_or_path``).
        config: Hub config name ("main", "ARC-Challenge", ...).
        fields: Column mapping (see ``FieldMap``).
        answer_type: Force an answer type; inferred when None.
        transform: Optional per-row function (see ``questions_from_dataset``).
    """
    ds = open_hf_dataset(name_or_path, split, config)
    task = task or Path(name_or_path).name
    return questions_from_dataset(ds, task, fields, answer_type, transform, source=f"{name_or_path}:{split}")
