"""The seed reasoning guidelines: general, task-agnostic advice that ReGenesis turns into task-specific plans.

The packaged set (``guidelines.json``) words, in this project's own phrasing, the 25 ideas that the
ReGenesis paper took from the Self-Discover reasoning modules, in the paper's order. Users can pass their
own JSON or YAML file: a list of ``{"id": ..., "text": ...}`` objects, or a list of plain strings (ids are
then ``g01``, ``g02``, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

PACKAGED_FILE = "guidelines.json"


@dataclass(frozen=True)
class Guideline:
    """One general reasoning guideline.

    Attributes:
        id: Stable identifier (part of candidate lineage and of cache keys), e.g. ``"g05-decompose"``.
        text: The guideline, one or two sentences.
    """

    id: str
    text: str


def _read(path: str | None) -> tuple[str, object]:
    if path is None:
        source = f"regenesis_pl/method/{PACKAGED_FILE}"
        text = resources.files("regenesis_pl.method").joinpath(PACKAGED_FILE).read_text(encoding="utf-8")
        return source, json.loads(text)
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"guideline file {path}: not found; pass an existing JSON/YAML file "
                                "or leave guideline_file unset for the packaged guidelines")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        return str(p), None
    try:
        data = yaml.safe_load(text) if p.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as err:
        raise ValueError(f"guideline file {p}: cannot be parsed ({str(err).splitlines()[0]})") from None
    return str(p), data


def load_guidelines(path: str | None = None) -> list[Guideline]:
    """Load seed guidelines from ``path`` (JSON or YAML), or the packaged 25 when ``path`` is None.

    Args:
        path: A JSON/YAML file holding a list of ``{"id", "text"}`` objects or of strings; None for the
            packaged set.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, malformed, or has duplicate/blank ids or texts (one line naming
            the file and the problem).
    """
    source, data = _read(path)
    if not data:
        raise ValueError(f"guideline file {source}: empty; it must hold a non-empty list of guidelines")
    if not isinstance(data, list):
        raise ValueError(f"guideline file {source}: top level is {type(data).__name__}, expected a list of "  # noqa: TRY004
                         "{id, text} objects or strings")
    guidelines: list[Guideline] = []
    for i, entry in enumerate(data):
        if isinstance(entry, str):
            gid, text = f"g{i + 1:02d}", entry
        elif isinstance(entry, dict) and isinstance(entry.get("id"), str) and isinstance(entry.get("text"), str):
            gid, text = entry["id"], entry["text"]
        else:
            raise ValueError(f"guideline file {source}: entry {i} is {entry!r:.80}; "  # noqa: TRY004
                             "expected a string or an object with string fields 'id' and 'text'")
        if not gid.strip() or not text.strip():
            raise ValueError(f"guideline file {source}: entry {i} has a blank id or text")
        guidelines.append(Guideline(id=gid.strip(), text=" ".join(text.split())))
    ids = [g.id for g in guidelines]
    duplicates = sorted({gid for gid in ids if ids.count(gid) > 1})
    if duplicates:
        raise ValueError(f"guideline file {source}: duplicate ids {duplicates}; every id must be unique")
    return guidelines
