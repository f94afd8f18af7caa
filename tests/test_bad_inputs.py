"""Bad input through the entry points a user reaches (the ``regenesis`` command, or the documented function):
each ends in one line that says what, where and how to fix it, with a non-zero exit, or in an explicit,
counted skip. Never a silent wrong result.

``CASES`` is the table; ``docs/bad_inputs.md`` is generated from it (``python tests/test_bad_inputs.py``) and a
test checks the two agree. Each case's ``says`` is a piece of the real message, asserted when the case runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_inputs.md"
SMOKE = ROOT / "configs" / "smoke_cpu.yaml"


@dataclass(frozen=True)
class Case:
    id: str
    entry: str  # the entry point a user reaches
    bad: str  # the bad input, in words
    says: str  # a piece of the one-line message (or, for a skip, of the counter that records it)
    run: Callable  # run(tmp_path) -> the one-line message; raises AssertionError when the input got through


def cli(*argv: str) -> Callable[[Path], str]:
    """Run ``regenesis <argv>`` in this process; it must exit non-zero with one line on stderr."""
    def run(tmp: Path) -> str:
        import io
        from contextlib import redirect_stderr

        from regenesis_pl.cli import main

        err = io.StringIO()
        with redirect_stderr(err):
            try:
                code = main([a.replace("{tmp}", str(tmp)) for a in argv])
            except SystemExit as exit_:
                code = exit_.code
        lines = [line for line in err.getvalue().splitlines() if line.strip() and not line.startswith("[regenesis]")]
        assert code not in (0, None), f"exit code {code}: {err.getvalue()[-500:]}"
        assert len(lines) == 1, f"expected one line, got {len(lines)}: {err.getvalue()[-1500:]}"
        return lines[0]
    return run


def raises(action: Callable[[Path], object], kinds=(ValueError, OSError, RuntimeError)) -> Callable[[Path], str]:
    """Call a documented function; it must raise one of ``kinds`` with a one-line message."""
    def run(tmp: Path) -> str:
        with pytest.raises(kinds) as info:
            action(tmp)
        message = str(info.value)
        assert "\n" not in message.strip(), message
        return message
    return run


def write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def smoke_with(tmp: Path, edit: Callable[[dict], None]) -> str:
    raw = yaml.safe_load(SMOKE.read_text())
    edit(raw)
    raw["data"]["run_dir"] = str(tmp / "run")
    return write(tmp, "edited.yaml", yaml.safe_dump(raw))


def fit_with(edit: Callable[[dict], None], *extra: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        return cli("fit", "--config", smoke_with(tmp, edit), *extra)(tmp)
    return run


def held_by_another_job(action: Callable[[Path], str]) -> Callable[[Path], str]:
    """Run ``action`` while a separate process (another running job) holds ``{tmp}/run``."""
    def run(tmp: Path) -> str:
        from kill_points import hold_run_dir

        holder = hold_run_dir(tmp / "run")
        try:
            message = action(tmp)
        finally:
            holder.kill()
            holder.wait()
        assert f"(process {holder.pid})" in message, message  # the refusal names the job that holds it
        return message
    return run


# ------------------------------------------------------------------------------------------ the cases
def _store_warning(tmp: Path) -> tuple[str, int, int]:
    """Open the store under ``tmp`` and return the one warning it logged, its skip counter and what it indexed."""
    import logging
    from logging.handlers import BufferingHandler

    from regenesis_pl.round.store import GenerationStore

    handler = BufferingHandler(capacity=100)
    logger = logging.getLogger("regenesis_pl.round.store")
    logger.addHandler(handler)
    try:
        store = GenerationStore(tmp / "store")
    finally:
        logger.removeHandler(handler)
    skipped, count = store.skipped_lines, len(store)
    store.close()
    seen = [record.getMessage() for record in handler.buffer]
    assert len(seen) == 1, seen
    return seen[0], skipped, count


def _store_line(tmp: Path, completions) -> str:
    line = json.dumps({"key": "k1", "weights_id": "w", "sampling": "s", "label": "x", "seed": 1,
                       "completions": completions, "prompt_tokens": 3})
    write(tmp, "store/generations.jsonl", line + "\n")
    warning, skipped, count = _store_warning(tmp)
    assert (skipped, count) == (1, 0), "the bad line was indexed"
    return warning


def _torn_store(tmp: Path) -> str:
    good = json.dumps({"key": "k0", "completions": [{"text": "a", "num_tokens": 1, "finish_reason": "stop"}]})
    write(tmp, "store/generations.jsonl", good + "\n" + good[:25])
    warning, skipped, count = _store_warning(tmp)
    assert (skipped, count) == (1, 1)
    return warning


def _disk_full(tmp: Path) -> None:
    import errno
    import os

    from regenesis_pl.engines.base import Completion, RequestOutput
    from regenesis_pl.round.store import GenerationStore

    store = GenerationStore(tmp / "store")
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    os.fsync = full
    try:
        store.append([("k", RequestOutput([Completion("t", 1, "stop")]), {})])
    finally:
        os.fsync = real
        store.close()


def _wrong_output_count(tmp: Path) -> None:
    from regenesis_pl.engines.base import Completion, RequestOutput, SamplingConfig
    from regenesis_pl.method.ledger import run_stage

    class OneShort:
        name = "short"

        def generate(self, conversations, sampling, request_seeds=None, progress=None, on_finished=None):
            return [RequestOutput([Completion("x", 1, "stop")]) for _ in conversations[1:]]

    run_stage(OneShort(), "path", [[{"role": "user", "content": "q"}]] * 3, SamplingConfig(), [1, 2, 3])


def _long_prompt(tmp: Path) -> None:
    from regenesis_pl.engines.prompt_jobs import encode_prompts, load_chat_tokenizer
    from regenesis_pl.model_source import resolve_model

    tokenizer = load_chat_tokenizer(resolve_model("embedded"))
    encode_prompts(tokenizer, [[{"role": "user", "content": "word " * 600}]], max_model_len=256)


def _no_record_fits(tmp: Path) -> None:
    from types import SimpleNamespace

    from regenesis_pl.data.datamodule import ReGenesisDataModule
    from regenesis_pl.model.build import load_tokenizer
    from regenesis_pl.tasks.registry import TaskConfig

    data = ReGenesisDataModule(train_task=TaskConfig(name="arithmetic"), max_length=64, val_fraction=0.0,
                               run_dir=str(tmp / "run"))
    chat = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    data.connect_round_source(lambda k: ([{"question_id": "q0", "messages": chat}], "made here"))
    data.trainer = SimpleNamespace(current_epoch=0, state=SimpleNamespace(fn="fit"),
                                   lightning_module=SimpleNamespace(tokenizer=load_tokenizer()))
    data.train_dataloader()


def _ckpt_last_starts_fresh(tmp: Path) -> str:
    """--ckpt_path last before any checkpoint: one line says the fit starts fresh (Trainer.fit is stubbed)."""
    import functools
    import io
    import logging

    from lightning.pytorch import Trainer

    from regenesis_pl.cli import main

    calls = []
    real = Trainer.fit

    @functools.wraps(real)  # LightningCLI reads fit's options from its signature
    def fake_fit(self, *args, **kwargs):
        calls.append(kwargs.get("ckpt_path", "unset"))

    Trainer.fit = fake_fit
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("regenesis_pl")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # as the CLI's own console handler sets it (this handler makes it skip that)
    try:
        main(["fit", "--config", smoke_with(tmp, lambda raw: None), "--ckpt_path", "last"])
    finally:
        Trainer.fit = real
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert calls == [None], calls
    lines = [line for line in stream.getvalue().splitlines() if "ckpt_path last" in line]
    assert len(lines) == 1, stream.getvalue()
    return lines[0]


CASES = [
    Case("yaml-syntax", "regenesis fit --config F", "a YAML syntax error in the config file",
         "YAML syntax error at line 2, column 1", cli("fit", "--config", "{tmp}/broken.yaml")),
    Case("config-missing", "regenesis evaluate --config F", "a config file that does not exist",
         "not found; check the path", cli("evaluate", "--config", "{tmp}/nope.yaml")),
    Case("config-overlay-alone", "regenesis fit --config configs/demo_cpu.yaml", "an overlay given without its base",
         "give --config configs/base_cpu.yaml before --config", cli("fit", "--config", str(ROOT / "configs" / "demo_cpu.yaml"))),
    Case("fit-unknown-key", "regenesis fit --config F", "a misspelled key (data.epochs_per_rnd)",
         "does not accept option 'data.epochs_per_rnd'", fit_with(lambda raw: raw["data"].update(epochs_per_rnd=2))),
    Case("fit-bad-type", "regenesis fit --config F", "a value of the wrong type (data.rounds: two)",
         'Parser key "data.rounds": Expected a <class \'int\'>. Got value: two',
         fit_with(lambda raw: raw["data"].update(rounds="two"))),
    Case("fit-bad-choice", "regenesis fit --model.mode", "a value outside the choices (model.mode int8)",
         'Parser key "model.mode"', fit_with(lambda raw: None, "--model.mode", "int8")),
    Case("fit-flat-engine-keys", "regenesis fit --config F", "a config from before `generation.engine`",
         "generation.backend moved to generation.engine.backend",
         fit_with(lambda raw: raw.update(generation={"backend": "vllm"}))),
    Case("fit-renamed-key", "regenesis fit --config F", "a config from before a key was renamed (model.model)",
         "model.model is now model.base_model",
         fit_with(lambda raw: raw["model"].update(model=raw["model"].pop("base_model")))),
    Case("renamed-option", "regenesis synthesize --synthesis.schedule stage", "an option from before its rename",
         "--synthesis.schedule is now --synthesis.order",
         cli("synthesize", "--task", "{name: arithmetic}", "--synthesis.schedule", "stage")),
    Case("study-renamed-key", "regenesis study --config F", "a study whose fit uses a renamed section (rounds:)",
         "fit.rounds is now fit.round_driver",
         cli("study", "--config", "{tmp}/study_old.yaml")),
    Case("fit-linked-key", "regenesis fit --config F", "a key computed from another one (trainer.max_epochs)",
         "trainer.max_epochs is computed from data.rounds x data.epochs_per_round",
         fit_with(lambda raw: raw["trainer"].update(max_epochs=7))),
    Case("fit-truncated-checkpoint", "regenesis fit --ckpt_path F", "a truncated checkpoint file",
         "is truncated or not a torch checkpoint", fit_with(lambda raw: None, "--ckpt_path", "{tmp}/cut.ckpt")),
    Case("fit-ckpt-last-none", "regenesis fit --ckpt_path last", "--ckpt_path last before any checkpoint exists",
         "no checkpoint in", _ckpt_last_starts_fresh),
    Case("fit-lora-rank", "regenesis fit --model.lora_r 64", "a LoRA rank above the engine's max_lora_rank",
         "model.lora_r=64 > generation.engine.max_lora_rank=8",
         raises(lambda tmp: _push_check("auto", "lora", 64, 8))),
    Case("qlora-base-unknown", "regenesis fit --generation.qlora_base fp8", "an unknown base to serve QLoRA on",
         "Got value: fp8", fit_with(lambda raw: None, "--generation.qlora_base", "fp8")),
    Case("push-unknown", "regenesis fit --generation.push fast", "an unknown push mode", "Got value: fast",
         fit_with(lambda raw: None, "--generation.push", "fast")),
    Case("unknown-task-evaluate", "regenesis evaluate --tasks", "a task name that does not exist",
         "unknown task 'nosuchtask'; known tasks:", cli("evaluate", "--tasks", "[{name: nosuchtask}]")),
    Case("unknown-task-synthesize", "regenesis synthesize --task", "a task name that does not exist",
         "unknown task 'nosuchtask'; known tasks:", cli("synthesize", "--task", "{name: nosuchtask}")),
    Case("empty-tasks", "regenesis evaluate --tasks []", "an empty evaluation task list", "`tasks` is empty",
         cli("evaluate", "--tasks", "[]")),
    Case("evaluate-max-tokens", "regenesis evaluate --max_tokens 0", "a zero token budget", "max_tokens=0 must be >= 1",
         cli("evaluate", "--tasks", "[{name: arithmetic}]", "--max_tokens", "0")),
    Case("unknown-option", "regenesis evaluate --max_tokns 3", "a misspelled option",
         "unrecognized arguments: --max_tokns", cli("evaluate", "--tasks", "[{name: arithmetic}]", "--max_tokns", "3")),
    Case("engine-backend", "regenesis evaluate --engine.backend tpu", "an engine backend that does not exist",
         "Got value: tpu", cli("evaluate", "--tasks", "[{name: arithmetic}]", "--engine.backend", "tpu")),
    Case("adapter-no-config", "regenesis evaluate --adapter D", "an adapter folder without adapter_config.json",
         "has no adapter_config.json", cli("evaluate", "--tasks", "[{name: arithmetic}]", "--adapter", "{tmp}")),
    Case("model-missing", "regenesis evaluate --model D", "a model folder that does not exist", "does not exist",
         cli("evaluate", "--tasks", "[{name: arithmetic}]", "--model", "{tmp}/no_model")),
    Case("task-file-missing", "regenesis synthesize --task {path: F}", "a local task file that does not exist",
         "no_such.jsonl", cli("synthesize", "--task", "{name: mine, path: {tmp}/no_such.jsonl}")),
    Case("task-file-bad-json", "regenesis synthesize --task {path: F}", "a local task file with a broken line",
         "bad.jsonl:2: not valid JSON", cli("synthesize", "--task", "{name: mine, path: {tmp}/bad.jsonl}")),
    Case("synthesis-method", "regenesis synthesize --synthesis.method", "an unknown synthesis method",
         "Got value: magic",
         cli("synthesize", "--task", "{name: arithmetic}", "--synthesis.method", "magic")),
    Case("synthesis-guidelines-range", "regenesis synthesize --synthesis.guidelines_per_question 99",
         "more guidelines per question than the seed set holds (refused before the engine starts)",
         "guidelines_per_question=99: must be between 1 and 25",
         cli("synthesize", "--task", "{name: arithmetic}", "--synthesis.guidelines_per_question", "99")),
    Case("fit-synthesis-range", "regenesis fit --data.synthesis.top_p 0",
         "a synthesis value out of range in a fit (refused when the config is parsed)",
         "synthesis.top_p=0.0: must be in (0, 1]",
         cli("fit", "--config", str(SMOKE), "--data.synthesis.top_p", "0", "--data.run_dir", "{tmp}/run")),
    Case("sampling-greedy-n", "SamplingConfig(n=4, temperature=0)", "several greedy copies of one request",
         "gives 4 identical greedy copies", raises(lambda tmp: _sampling(n=4, temperature=0.0))),
    Case("sampling-top-p", "SamplingConfig(top_p=0)", "an empty nucleus", "top_p=0 must be in (0, 1]",
         raises(lambda tmp: _sampling(top_p=0))),
    Case("flush-every", "CachedEngine(flush_every=0)", "no requests per engine call", "flush_every=0 must be >= 1",
         raises(lambda tmp: _cached(tmp, flush_every=0))),
    Case("keep-full-weights", "EngineCallback(keep_full_weights=0)", "keeping no pushed weights",
         "keep_full_weights=0 must be >= 1", raises(lambda tmp: _engine_callback(keep_full_weights=0))),
    Case("store-bad-completions", "regenesis synthesize / fit (store read back)",
         "a store line with a key but malformed completions", "skipping unreadable line 1",
         lambda tmp: _store_line(tmp, [{"text": 3}])),
    Case("store-torn-line", "regenesis synthesize / fit (store read back)", "a store whose last line was cut by a kill",
         "skipping a torn last line (25 bytes, no line end)", _torn_store),
    Case("store-disk-full", "regenesis synthesize / fit (store write)", "the disk fills while the store is written",
         "cannot write (No space left on device); free space", raises(_disk_full)),
    Case("run-dir-unusable", "regenesis synthesize --run_dir D", "a run directory that cannot be created",
         "cannot be created", cli("synthesize", "--task", "{name: arithmetic}", "--run_dir", "{tmp}/file.txt/run")),
    Case("run-dir-in-use", "regenesis synthesize --run_dir D", "a run directory another running job is writing",
         "is in use by another running job",
         held_by_another_job(cli("synthesize", "--task", "{name: arithmetic}", "--run_dir", "{tmp}/run"))),
    Case("fit-run-dir-in-use", "regenesis fit --data.run_dir D",
         "a fit on a run directory another running job holds (refused before the model or an engine is built)",
         "is in use by another running job", held_by_another_job(fit_with(lambda raw: None))),
    Case("corrupt-round-marker", "regenesis fit --ckpt_path last (round read back)", "a corrupt round marker",
         "is not valid JSON", raises(lambda tmp: _read_json(write(tmp, "round-0/fit_round.json", "{cut"), "round marker"))),
    Case("corrupt-candidates", "regenesis synthesize / report (round read back)", "a corrupt candidates.jsonl",
         "line 1 is unreadable", raises(lambda tmp: _candidates(tmp))),
    Case("prompt-too-long", "engine.generate (every stage and evaluation)", "a prompt longer than max_model_len",
         "leaves no room to generate within max_model_len=256", raises(_long_prompt)),
    Case("no-record-fits", "regenesis fit (a round's training data)", "no training record fits data.max_length",
         "fits max_length=64", raises(_no_record_fits)),
    Case("wrong-output-count", "a custom Engine passed to synthesis", "an engine that returns too few outputs",
         "got 2 outputs for 3 requests", raises(_wrong_output_count)),
]


def _push_check(mode, training, rank, max_rank):
    from regenesis_pl.engines.push_mode import check_push_settings

    check_push_settings(mode, "vllm", training, rank, max_rank)


def _sampling(**kwargs):
    from regenesis_pl.engines.base import SamplingConfig

    SamplingConfig(**kwargs)


def _cached(tmp, **kwargs):
    from regenesis_pl.round.cached_engine import CachedEngine

    CachedEngine(object(), tmp / "store", **kwargs)


def _engine_callback(**kwargs):
    from regenesis_pl.callbacks.engine import EngineCallback

    EngineCallback(**kwargs)


def _read_json(path, what):
    from regenesis_pl.atomic import read_json

    read_json(path, what)


def _candidates(tmp):
    from regenesis_pl.round.sft_records import load_candidates

    load_candidates(write(tmp, "candidates.jsonl", '{"question_id": "q", "task": \n'))


def _prepare(tmp: Path) -> None:
    write(tmp, "broken.yaml", "model: [unclosed\n")
    write(tmp, "cut.ckpt", "PK\x03\x04 truncated")
    write(tmp, "bad.jsonl", '{"question": "1 + 1?", "answer": "2"}\n{"question": \n')
    write(tmp, "file.txt", "not a folder")
    write(tmp, "study_old.yaml", "fit:\n  rounds: {shard_timeout_minutes: 5}\narms: [{name: base, train: false}]\n")


@pytest.mark.slow  # about a minute in all: several cases parse the fit CLI or load the embedded tokenizer
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_in_one_clear_line(case, tmp_path):
    _prepare(tmp_path)
    message = case.run(tmp_path)
    assert case.says in message, f"{case.id}: {message!r}"
    assert str(tmp_path) not in case.says


def test_at_least_thirty_bad_inputs_with_distinct_ids():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


def render() -> str:
    lines = ["# Bad input and what it says", "",
             "Generated from `tests/test_bad_inputs.py` (`python tests/test_bad_inputs.py`), where every row runs: the",
             "message column is a piece of the real one-line message (paths vary). Errors exit with code 2; a skip",
             "is counted where the run reports it.", "",
             "| id | entry point | bad input | message (excerpt) |", "|---|---|---|---|"]
    for c in CASES:
        says = c.says.replace("|", "\\|")
        lines.append(f"| {c.id} | `{c.entry}` | {c.bad} | {says} |")
    return "\n".join(lines) + "\n"


def test_docs_table_matches_the_cases():
    assert DOC.is_file() and DOC.read_text() == render(), "docs/bad_inputs.md is stale: run python tests/test_bad_inputs.py"


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC} ({len(CASES)} cases)")
    sys.exit(0)
