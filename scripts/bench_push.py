"""Benchmark: a later round served three ways, side by side in one run: base weights, the trained adapter as a
LoRA request (``push: adapter``), and the adapter folded into the weights (``push: merged``).

For each way, on one vLLM engine: the demo's synthesis settings on ``--questions`` arithmetic training
questions (what round 1 does) and the post-round evaluation (greedy, ``--eval-limit`` arithmetic test
questions). Prints generated tokens/s and seconds, the merged/adapter and merged/base ratios, the merge +
reload time, how many greedy evaluation texts the two adapter servings share, and each speed as a share of
this machine's decode compute limit (``regenesis_pl.roofline``, measured in the same run).

    python scripts/bench_push.py                                 # the demo's round-0 adapter (run the demo first)
    python scripts/bench_push.py --adapter runs/x/adapters/round-0-step-8 --questions 8 --json push.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

DEMO_ADAPTER = "runs/demo_cpu/adapters/round-0-step-12"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", default=DEMO_ADAPTER, help="a trained peft adapter of the embedded model")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--questions", type=int, default=4, help="arithmetic training questions synthesized")
    parser.add_argument("--eval-limit", type=int, default=40, help="arithmetic test questions evaluated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if not (Path(args.adapter) / "adapter_config.json").is_file():
        raise SystemExit(f"bench_push: {args.adapter} is not a peft adapter folder; run `regenesis fit --config "
                         "configs/demo_cpu.yaml` first or pass --adapter")

    import torch

    torch.set_num_threads(args.threads)
    from regenesis_pl.engines.factory import EngineConfig, build_engine
    from regenesis_pl.evaluation import answer_questions
    from regenesis_pl.method.synthesis import SynthesisConfig
    from regenesis_pl.model.merge import fold_adapter_folder
    from regenesis_pl.model_source import resolve_model
    from regenesis_pl.roofline import describe, matmul_flops, parameter_count
    from regenesis_pl.round.synthesize import synthesize_to_store
    from regenesis_pl.tasks.registry import load_task

    model_dir = resolve_model(args.model)
    flops, params = matmul_flops(), parameter_count(model_dir)
    train = load_task("arithmetic", "train", limit=args.questions)
    test = load_task("arithmetic", "test", limit=args.eval_limit)
    synthesis = SynthesisConfig(guidelines_per_question=3, temperature=0.8, max_tokens=256, plan_max_tokens=96,
                                hint_stages=["adapt", "structure", "path"], require_boxed=False, max_path_tokens=256,
                                max_paths_per_question=3, seed=0)  # configs/demo_cpu.yaml's settings
    engine = build_engine(EngineConfig(backend="vllm", max_lora_rank=64, kv_cache_gb=2.0), model_dir)
    print(f"cpus={os.cpu_count()} load_avg={os.getloadavg()[0]:.1f} matmul {flops / 1e9:.1f} GFLOP/s, "
          f"{params / 1e6:.1f}M parameters; {len(train)} questions synthesized, {len(test)} evaluated", flush=True)
    rows, texts = {}, {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for way in ("base", "adapter", "merged"):
                start = time.perf_counter()
                if way == "adapter":
                    engine.set_adapter(args.adapter)
                elif way == "merged":
                    engine.set_adapter(None)
                    fold_start = time.perf_counter()
                    fold_adapter_folder(model_dir, args.adapter, Path(tmp) / "merged", getattr(torch, engine.dtype))
                    rows["merge_s"] = time.perf_counter() - fold_start
                    engine.load_weights(str(Path(tmp) / "merged"))
                switch_s = time.perf_counter() - start
                engine.llm.reset_prefix_cache()  # no way profits from another's cached prompts
                start = time.perf_counter()
                result = synthesize_to_store(engine, train, synthesis, round=1, run_dir=f"{tmp}/{way}", say=lambda m: None)
                synth_s = time.perf_counter() - start
                synth_tokens = result.stats["tokens"]["total_generated_tokens"]
                start = time.perf_counter()
                records = answer_questions(engine, test, max_tokens=256, progress=None)
                eval_s = time.perf_counter() - start
                eval_tokens = sum(r["tokens"] for r in records)
                texts[way] = [r["text"] for r in records]
                rows[way] = {"switch_s": round(switch_s, 2), "synthesis_s": round(synth_s, 1),
                             "synthesis_tokens": synth_tokens, "synthesis_tok_s": round(synth_tokens / synth_s, 1),
                             "eval_s": round(eval_s, 1), "eval_tokens": eval_tokens,
                             "eval_tok_s": round(eval_tokens / eval_s, 1),
                             "accuracy": round(sum(r["correct"] for r in records) / max(len(records), 1), 4)}
                r = rows[way]
                print(f"{way:<8} switch {switch_s:6.2f} s | synthesis {synth_s:7.1f} s, {synth_tokens:6d} tokens, "
                      f"{r['synthesis_tok_s']:6.1f} tok/s ({describe(r['synthesis_tok_s'], params, flops)}) | "
                      f"evaluation {eval_s:6.1f} s, {r['eval_tok_s']:6.1f} tok/s, accuracy {r['accuracy']:.1%}",
                      flush=True)
    finally:
        engine.close()
    base, adapter, merged = rows["base"], rows["adapter"], rows["merged"]
    same = sum(a == b for a, b in zip(texts["adapter"], texts["merged"]))
    ratios = {"merged/adapter synthesis tok/s": merged["synthesis_tok_s"] / adapter["synthesis_tok_s"],
              "merged/base synthesis tok/s": merged["synthesis_tok_s"] / base["synthesis_tok_s"],
              "adapter/merged evaluation time": adapter["eval_s"] / merged["eval_s"],
              "merged/base evaluation time": merged["eval_s"] / base["eval_s"]}
    for name, value in ratios.items():
        print(f"{name:<32} {value:5.2f}x")
    print(f"merge (load + fold + save) {rows['merge_s']:.2f} s; identical greedy evaluation texts adapter vs merged: "
          f"{same}/{len(texts['adapter'])}; load_avg now {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "flops": flops, "parameters": params, "rows": rows,
                                               "identical_eval_texts": same,
                                               "ratios": {k: round(v, 3) for k, v in ratios.items()}}, indent=2))


if __name__ == "__main__":
    main()
