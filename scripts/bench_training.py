"""Benchmark: training tokens/s of SFTModule under Lightning vs a plain Hugging Face ``transformers.Trainer``.

Same model, LoRA settings, records, batch size, max_length, learning rate and step count on both sides;
each side runs in its own subprocess, one after the other (``--repeats`` alternates them to even out a
busy machine). Ours batches with ``LengthGroupedBatchSampler`` (records of similar length together); HF
uses its defaults (random order, each batch padded to its longest record). Throughput counts non-pad tokens
only, over the wall time between the end of the first step and the end of the last (the first step is
warm-up). Prints each side's tokens/s, step time, pad share and peak memory, and the ratio ours / HF.

    python scripts/bench_training.py                         # 64 records, 8 steps each, batch 4, LoRA r=16
    python scripts/bench_training.py --records 256 --steps 16 --repeats 2 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time


def make_conversations(n: int, seed: int):
    """n SFT chats whose worked answers vary a lot in length (summing 1..12 numbers, one step per line)."""
    from regenesis_pl.chat import sft_messages
    from regenesis_pl.tasks.types import AnswerType, Question

    rng = random.Random(seed)
    out = []
    for i in range(n):
        numbers = [rng.randint(10, 99) for _ in range(rng.randint(1, 12))]
        q = Question(id=f"b{i}", task="sum", text=f"Add these numbers: {', '.join(map(str, numbers))}.",
                     answer_type=AnswerType.NUMERIC, answer=str(sum(numbers)))
        total, lines = numbers[0], []
        for x in numbers[1:]:
            lines.append(f"{total} + {x} = {total + x}.")
            total += x
        out.append(sft_messages(q, "\n".join(lines) + f"\nThe answer is \\boxed{{{total}}}."))
    return out


class CountingCollator:
    """Wraps a collator and records, per batch, the real (non-pad) and padded token counts."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.real: list[int] = []
        self.padded: list[int] = []

    def __call__(self, features):
        batch = self.inner(features)
        self.real.append(int(batch["attention_mask"].sum()))
        self.padded.append(int(batch["attention_mask"].numel()))
        return batch


def summarize(side: str, ends: list[float], collator: CountingCollator, steps: int) -> dict:
    if len(ends) < 2:
        raise RuntimeError(f"{side}: only {len(ends)} steps ran; use --steps >= 2")
    seconds = ends[-1] - ends[0]
    real = sum(collator.real[1:steps])
    padded = sum(collator.padded[1:steps])
    return {"side": side, "steps": len(ends), "timed_steps": len(ends) - 1, "seconds": seconds,
            "step_s": seconds / (len(ends) - 1), "tokens_per_s": real / seconds,
            "padded_tokens_per_s": padded / seconds, "pad_fraction": 1 - real / padded,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def run_ours(args, records, tokenizer) -> dict:
    import lightning as L
    from torch.utils.data import DataLoader

    from regenesis_pl.data.sft import LengthGroupedBatchSampler, SFTCollator, SFTDataset
    from regenesis_pl.model.module import SFTModule

    module = SFTModule(base_model=args.model, mode="lora", lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                       lr=args.lr, warmup_ratio=0.0, scheduler="cosine")
    dataset = SFTDataset(records)
    collator = CountingCollator(SFTCollator(tokenizer.pad_token_id))
    sampler = LengthGroupedBatchSampler(dataset.lengths, args.batch_size, shuffle=True, seed=args.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator)
    ends: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *_):
            ends.append(time.perf_counter())

    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False, callbacks=[Clock()],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    return summarize("lightning (ours)", ends, collator, args.steps)


def run_hf(args, records, tokenizer) -> dict:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from regenesis_pl.model.build import build_model

    model = build_model(args.model, mode="lora", lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100))
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch_size,
                                  max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="cosine",
                                  warmup_steps=0, weight_decay=0.0, optim="adamw_torch", save_strategy="no",
                                  report_to=[], logging_strategy="no", use_cpu=True, seed=args.seed,
                                  dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=targs, train_dataset=Dataset.from_list(records),
                          data_collator=collator, callbacks=[Clock()])
        trainer.train()
    return summarize("transformers.Trainer", ends, collator, args.steps)


def one_side(args) -> None:
    import torch

    from regenesis_pl.data.sft import encode_conversations
    from regenesis_pl.model.build import load_tokenizer

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    encoded = encode_conversations(tokenizer, make_conversations(args.records, args.seed), args.max_length)
    result = (run_ours if args.side == "ours" else run_hf)(args, encoded.records, tokenizer)
    result["records"], result["dropped"] = len(encoded.records), encoded.dropped
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="run both sides this many times, alternating")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--side", choices=["ours", "hf"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        one_side(args)
        return
    results = []
    for repeat in range(args.repeats):
        for side in (("ours", "hf") if repeat % 2 == 0 else ("hf", "ours")):
            cmd = [sys.executable, __file__, "--side", side] + [a for a in sys.argv[1:]]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"bench side {side!r} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
            r = results[-1]
            print(f"{r['side']:>22}: {r['tokens_per_s']:8.1f} non-pad tokens/s  {r['step_s']:6.2f} s/step  "
                  f"pad {100 * r['pad_fraction']:4.1f}%  peak RSS {r['peak_rss_gb']:.2f} GB  "
                  f"({r['records']} records, {r['dropped']} dropped, {r['timed_steps']} timed steps)", flush=True)
    ours = [r["tokens_per_s"] for r in results if r["side"].startswith("lightning")]
    hf = [r["tokens_per_s"] for r in results if r["side"].startswith("transformers")]
    ratio = (sum(ours) / len(ours)) / (sum(hf) / len(hf))
    print(f"ratio ours / HF (non-pad tokens/s): {ratio:.2f}x  (goal >= 1.2x)")
    import torch

    from regenesis_pl.model_source import resolve_model
    from regenesis_pl.roofline import describe, matmul_flops, parameter_count

    torch.set_num_threads(args.threads)
    flops, params = matmul_flops(), parameter_count(resolve_model(args.model))
    for side, speeds in (("ours", ours), ("HF", hf)):
        print(f"{side}: {describe(sum(speeds) / len(speeds), params, flops, 'lora_train')} (padding included in "
              "the work, not in the tokens)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "ratio": ratio, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
