"""Benchmark: the transformers and vLLM engines side by side on the same 32 chat prompts (greedy).

Prints each engine's start time, generated tokens/s and the vLLM/transformers ratio, then the time of the
weight-swap operations a training loop uses between rounds (set_adapter with a random LoRA, set_adapter(None),
load_weights of the base folder) and how many greedy texts agree between the engines.

    python scripts/bench_engines.py                     # embedded model, 32 prompts, max_tokens 128
    python scripts/bench_engines.py --prompts 16 --max-tokens 64 --threads 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def make_conversations(n: int):
    """n short questions of a tiny mixed task list, as the evaluation chat turns (``question_messages``)."""
    from regenesis_pl.chat import question_messages
    from regenesis_pl.tasks.types import AnswerType, Question

    templates = [
        ("What is {a} + {b}?", AnswerType.NUMERIC),
        ("A box holds {a} pens. How many pens are in {b} boxes?", AnswerType.NUMERIC),
        ("Is {a} greater than {b}? Answer yes or no.", AnswerType.YES_NO),
        ("Tom has {a} marbles and gives away {b}. How many marbles does he have left?", AnswerType.NUMERIC),
    ]
    out = []
    for i in range(n):
        text, kind = templates[i % len(templates)]
        a, b = 10 + 7 * i, 3 + (5 * i) % 11
        out.append(question_messages(Question(id=f"b{i}", task="bench", text=text.format(a=a, b=b),
                                              answer_type=kind, answer="0")))
    return out


def side_by_side_parser(doc: str, prompts: int, max_tokens: int, repeats: int) -> argparse.ArgumentParser:
    """The options every side-by-side engine benchmark takes: model, prompt count, new tokens, repeats."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--prompts", type=int, default=prompts)
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser


def side_by_side_inputs(args, **shown):
    """(model folder, conversations, greedy sampling) of a side-by-side run, after one line saying what it runs
    on (``shown``: more of it, e.g. the ways compared)."""
    from regenesis_pl.engines.base import SamplingConfig
    from regenesis_pl.model_source import resolve_model

    model_dir = resolve_model(args.model)
    extra = "".join(f" {key}={value}" for key, value in shown.items())
    print(f"model={model_dir} prompts={args.prompts} max_tokens={args.max_tokens} cores={len(os.sched_getaffinity(0))} "
          f"load_avg={os.getloadavg()[0]:.1f}{extra}")
    return model_dir, make_conversations(args.prompts), SamplingConfig(max_tokens=args.max_tokens)


def make_adapter(model_dir: str, out_dir: str) -> str:
    """A random-init LoRA (r=8) on the attention projections."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


def run(engine, conversations, sampling):
    start = time.perf_counter()
    outputs = engine.generate(conversations, sampling)
    seconds = time.perf_counter() - start
    tokens = sum(c.num_tokens for o in outputs for c in o.completions)
    return outputs, tokens, seconds


def timed_fresh_engine(config, model_dir: str, conversations, sampling):
    """Build an engine, warm it up on two short prompts, time ``conversations``, close it: (outputs, tokens,
    seconds). Benchmarks that compare start-up settings build one engine per way with it."""
    from regenesis_pl.engines.base import SamplingConfig
    from regenesis_pl.engines.factory import build_engine

    engine = build_engine(config, model_dir)
    try:
        engine.generate(conversations[:2], SamplingConfig(max_tokens=4))  # warm-up
        return run(engine, conversations, sampling)
    finally:
        engine.close()


def swap_timings(engine, adapter_dir: str, model_dir: str, conversations, sampling) -> dict[str, float]:
    """Seconds for set_adapter(adapter), the first generate after it, set_adapter(None), load_weights."""
    t0 = time.perf_counter()
    engine.set_adapter(adapter_dir)
    t1 = time.perf_counter()
    engine.generate(conversations[:1], sampling)
    t2 = time.perf_counter()
    engine.set_adapter(None)
    t3 = time.perf_counter()
    engine.load_weights(model_dir)
    t4 = time.perf_counter()
    return {"set_adapter": t1 - t0, "first_generate_with_adapter(1 req)": t2 - t1, "set_adapter(None)": t3 - t2,
            "load_weights": t4 - t3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16, help="transformers batch size")
    parser.add_argument("--kv-cache-gb", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in this process (0: default)")
    args = parser.parse_args()

    import torch

    from regenesis_pl.engines.base import SamplingConfig
    from regenesis_pl.engines.factory import EngineConfig, build_engine
    from regenesis_pl.model_source import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = resolve_model(args.model)
    conversations = make_conversations(args.prompts)
    sampling = SamplingConfig(max_tokens=args.max_tokens)
    short = SamplingConfig(max_tokens=8)
    print(f"model={model_dir} prompts={args.prompts} max_tokens={args.max_tokens} "
          f"cpus={os.cpu_count()} load_avg={os.getloadavg()[0]:.1f}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = make_adapter(model_dir, os.path.join(tmp, "adapter"))
        for backend in ("transformers", "vllm"):
            start = time.perf_counter()
            engine = build_engine(EngineConfig(backend=backend, batch_size=args.batch_size, max_lora_rank=8,
                                               kv_cache_gb=args.kv_cache_gb), model_dir)
            started = time.perf_counter() - start
            outputs, tokens, seconds = run(engine, conversations, sampling)
            swaps = swap_timings(engine, adapter_dir, model_dir, conversations, short)
            engine.close()
            results[backend] = outputs
            print(f"[{backend}] start {started:.1f} s | {tokens} tokens in {seconds:.1f} s = "
                  f"{tokens / seconds:.1f} tokens/s | " + " | ".join(f"{k} {v:.2f} s" for k, v in swaps.items()))
            results[backend + "_tps"] = tokens / seconds
    from regenesis_pl.roofline import describe, matmul_flops, parameter_count

    flops, params = matmul_flops(), parameter_count(model_dir)
    for backend in ("transformers", "vllm"):
        print(f"[{backend}] {describe(results[backend + '_tps'], params, flops)}")
    ratio = results["vllm_tps"] / results["transformers_tps"]
    same = sum(a.completions[0].text == b.completions[0].text
               for a, b in zip(results["transformers"], results["vllm"]))
    print(f"vllm / transformers tokens/s = {ratio:.2f}; identical greedy texts: {same}/{len(conversations)}; "
          f"load_avg now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
