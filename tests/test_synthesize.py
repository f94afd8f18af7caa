"""Resumable synthesis with the real embedded model: engine errors, SIGKILL, reruns, the empty-round error.

One transformers engine is shared by the module; runs use small settings (2 questions x 2 guidelines, short
generations, a store sub-batch of 2 requests) under which the reference run keeps at least one path. The reference is an uninterrupted run in a fresh directory;
every interrupted run must, once rerun, generate only what was missing and keep exactly the same paths.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from regenesis_pl.commands.synthesize import run_synthesis
from regenesis_pl.engines.factory import EngineConfig
from regenesis_pl.layout import RunLayout
from regenesis_pl.method.synthesis import SynthesisConfig
from regenesis_pl.round.sft_records import load_candidates, load_sft_records
from regenesis_pl.round.store import GenerationStore
from regenesis_pl.round.synthesize import EmptyRoundError, summary_markdown, synthesize_to_store
from regenesis_pl.tasks.registry import TaskConfig, load_questions
from regenesis_pl.tasks.types import AnswerType, Question

FLUSH = 2
# Short but complete generations: with these settings the embedded model keeps a path (add-1's "4 + 7 = 11"),
# so the resume tests compare a non-empty kept set, not just the lineage.
SETTINGS = {"guidelines_per_question": 2, "plan_max_tokens": 24, "max_tokens": 128, "temperature": 0.7,
            "require_boxed": False, "seed": 7}
ENGINE = {"backend": "transformers", "batch_size": 8}


def _write_questions(path: Path) -> Path:
    rows = [Question(id=f"add-{i}", task="toy_add", text=f"What is {i + 3} + {2 * i + 5}?",
                     answer_type=AnswerType.NUMERIC, answer=str(3 * i + 8)).to_dict() for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _kept_key(records):
    return sorted((r["question_id"], r["guideline_id"], r["hint"], r["messages"][-1]["content"]) for r in records)


def _lineage(rdir: Path):
    """Every candidate of a round with the texts of all three stages and its verdict (a strict comparison)."""
    return sorted((c.question_id, c.guideline_id, c.hint, c.sample_index, c.adapted, c.structure, c.path,
                   c.verdict.value, c.kept) for c in load_candidates(rdir / "candidates.jsonl"))


def round_dir(run_dir, k: int) -> Path:
    return RunLayout(run_dir).round_dir(k)


def _store_lines(rdir: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in rdir.glob("store-*/generations*.jsonl"))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    path = _write_questions(tmp_path_factory.mktemp("data") / "toy_add.jsonl")
    return TaskConfig(name="toy_add", path=str(path))


@pytest.fixture(scope="module")
def engine():
    import torch

    from regenesis_pl.engines.factory import build_engine

    torch.set_num_threads(1)
    eng = build_engine(EngineConfig(**ENGINE), "embedded")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def reference(engine, task, tmp_path_factory):
    """An uninterrupted run in a fresh directory: its kept records and its number of requests."""
    run_dir = tmp_path_factory.mktemp("reference")
    result = synthesize_to_store(engine, load_questions(task), SynthesisConfig(**SETTINGS), run_dir=run_dir,
                                 flush_every=FLUSH, model="embedded")
    store = result.stats["store"]
    assert store["hits"] == 0 and store["misses"] == store["stored"] > 2 * FLUSH
    records = load_sft_records(round_dir(run_dir, 0) / "kept.jsonl")
    lineage = _lineage(round_dir(run_dir, 0))
    assert len(lineage) == result.stats["candidates"] and all(row[6] for row in lineage)
    assert len(records) == result.stats["kept"] >= 1, "the reference run must keep a path for a real comparison"
    return {"run_dir": run_dir, "total": store["misses"], "kept": _kept_key(records), "lineage": lineage,
            "stats": result.stats}


class FailAfter:
    """A real engine that raises on its (calls + 1)-th generate call, as an engine crash mid-round would."""

    def __init__(self, engine, calls: int) -> None:
        self.inner, self.left = engine, calls
        self.name = engine.name

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def tokenizer(self):
        return self.inner.tokenizer

    @property
    def weights_id(self):
        return self.inner.weights_id

    def generate(self, conversations, sampling, request_seeds=None, progress=None, on_finished=None):
        if self.left == 0:
            raise RuntimeError("engine crashed")
        self.left -= 1
        return self.inner.generate(conversations, sampling, request_seeds=request_seeds, progress=progress)


@pytest.mark.slow
def test_rerun_of_finished_round_generates_nothing(engine, task, reference):
    result = synthesize_to_store(engine, load_questions(task), SynthesisConfig(**SETTINGS),
                                 run_dir=reference["run_dir"], flush_every=FLUSH, model="embedded")
    assert result.stats["store"]["misses"] == 0 and result.stats["store"]["hits"] >= reference["total"]
    assert _kept_key(load_sft_records(round_dir(reference["run_dir"], 0) / "kept.jsonl")) == reference["kept"]
    assert _lineage(round_dir(reference["run_dir"], 0)) == reference["lineage"]
    summary = json.loads((round_dir(reference["run_dir"], 0) / "summary.json").read_text())
    assert summary["questions"] == 2 and summary["candidates"] == reference["stats"]["candidates"]
    assert "store hits / misses" in summary_markdown(summary)


@pytest.mark.slow
def test_engine_error_mid_round_keeps_stored_work(engine, task, reference, tmp_path):
    questions, config = load_questions(task), SynthesisConfig(**SETTINGS)
    with pytest.raises(RuntimeError, match="engine crashed"):
        synthesize_to_store(FailAfter(engine, calls=2), questions, config, run_dir=tmp_path, flush_every=FLUSH,
                            model="embedded")
    stored = _store_lines(round_dir(tmp_path, 0))
    assert 0 < stored < reference["total"]
    result = synthesize_to_store(engine, questions, config, run_dir=tmp_path, flush_every=FLUSH, model="embedded")
    assert result.stats["store"]["misses"] == reference["total"] - stored
    assert _kept_key(load_sft_records(round_dir(tmp_path, 0) / "kept.jsonl")) == reference["kept"]
    assert _lineage(round_dir(tmp_path, 0)) == reference["lineage"]


@pytest.mark.slow
def test_sigkill_then_rerun_generates_only_the_missing_requests(task, reference, tmp_path):
    run_dir = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)
        from regenesis_pl.engines.factory import EngineConfig
        from regenesis_pl.method.synthesis import SynthesisConfig
        from regenesis_pl.commands.synthesize import run_synthesis
        from regenesis_pl.tasks.registry import TaskConfig
        run_synthesis(task=TaskConfig(name={task.name!r}, path={task.path!r}), engine=EngineConfig(**{ENGINE!r}),
                      synthesis=SynthesisConfig(**{SETTINGS!r}), run_dir={str(run_dir)!r},
                      require_kept=False)  # flush_every None: each stage in one call, stored as it finishes
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + 600
    try:
        while _store_lines(round_dir(run_dir, 0)) < 2 * FLUSH:
            assert proc.poll() is None, f"synthesis process ended before the kill: {proc.stderr.read()[-2000:]!r}"
            assert time.monotonic() < deadline, "no store lines after 600 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rdir = round_dir(run_dir, 0)
    store = GenerationStore(next(rdir.glob("store-*")))  # a torn last line is dropped here
    stored = len(store)
    store.close()
    assert 2 * FLUSH <= stored < reference["total"]
    assert not (rdir / "kept.jsonl").exists()
    summary = run_synthesis(task=task, engine=EngineConfig(**ENGINE), synthesis=SynthesisConfig(**SETTINGS),
                            run_dir=str(run_dir), require_kept=False)
    assert summary["store"]["misses"] == reference["total"] - stored
    assert summary["store"]["hits"] >= stored
    assert _kept_key(load_sft_records(rdir / "kept.jsonl")) == reference["kept"]
    assert _lineage(rdir) == reference["lineage"]


@pytest.mark.slow
def test_changed_settings_reuse_nothing_and_empty_round_raises(engine, task, reference, tmp_path, capsys):
    questions = load_questions(task)[:1]
    config = SynthesisConfig(**{**SETTINGS, "guidelines_per_question": 1, "hint_stages": []})
    first = synthesize_to_store(engine, questions, config, run_dir=reference["run_dir"], flush_every=FLUSH,
                                model="embedded")
    assert "reusing nothing" in capsys.readouterr().out  # the same requests exist in the old sub-store
    assert first.stats["store"]["hits"] == 0 and first.stats["store"]["misses"] == 3
    # An unreachable answer: nothing can match, the round keeps nothing and says why.
    impossible = [Question(id="never", task="toy_add", text="What is 1 + 1?", answer_type=AnswerType.NUMERIC,
                           answer="123456789")]
    with pytest.raises(EmptyRoundError, match=r"kept 0 paths: 1 questions, 1 candidates"):
        synthesize_to_store(engine, impossible, config, run_dir=tmp_path, flush_every=FLUSH, require_kept=True)
    summary = json.loads((round_dir(tmp_path, 0) / "summary.json").read_text())
    assert summary["kept"] == 0 and (round_dir(tmp_path, 0) / "kept.jsonl").read_text() == ""


@pytest.mark.slow
def test_cli_exits_2_on_an_empty_round(tmp_path, capsys):
    from regenesis_pl.cli import main

    data = tmp_path / "never.jsonl"
    data.write_text(json.dumps(Question(id="never", task="never", text="What is 1 + 1?",
                                        answer_type=AnswerType.NUMERIC, answer="123456789").to_dict()) + "\n")
    code = main(["synthesize", "--task.name", "never", "--task.path", str(data),
                 "--engine.backend", "transformers", "--synthesis.guidelines_per_question", "1",
                 "--synthesis.hint_stages", "[]", "--synthesis.plan_max_tokens", "8", "--synthesis.max_tokens", "8",
                 "--run_dir", str(tmp_path / "run")])
    assert code == 2
    assert "kept 0 paths: 1 questions" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "round-0" / "summary.json").read_text())["kept"] == 0


def test_summary_shows_majority_precision_only_when_measured():
    base = {"round": 0, "method": "lmsi", "questions": 2, "kept": 3}
    line = "| majority-voted kept paths matching the unused gold answer | 2 / 3 (66.7%) |"
    assert line in summary_markdown({**base, "majority_kept_matching_gold": {"checked": 3, "matching": 2,
                                                                              "rate": 0.6667}})
    assert "unused gold answer" not in summary_markdown({**base, "majority_kept_matching_gold": None})
