"""How close a measured speed is to what the machine could do: its dense matmul FLOP/s, measured in the same run.

A benchmark's ratios compare our code with other code on the same machine; this compares it with the machine.
The model's work per token is counted the usual way: about 2 x parameters FLOP to decode a token, about 4x for
LoRA training (the frozen weights still run forward and pass gradients back) and about 6x for full fine-tuning.
The limit is the machine's measured matmul rate in the benchmark's dtype, so a share near 1 means compute-bound
at peak; decoding small batches is usually memory-bound and sits far below it.
"""

from __future__ import annotations

import time

FLOP_PER_TOKEN = {"decode": 2.0, "lora_train": 4.0, "full_train": 6.0}


def matmul_flops(device: str = "cpu", dtype: str = "float32", size: int = 1024, seconds: float = 2.0) -> float:
    """Dense matmul FLOP/s of ``device`` in ``dtype`` with the current torch threads (best of repeated runs)."""
    import torch

    kind = getattr(torch, dtype)
    a = torch.randn(size, size, device=device, dtype=kind)
    b = torch.randn(size, size, device=device, dtype=kind)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    torch.mm(a, b)
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        sync()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def parameter_count(model_dir: str) -> int:
    """Parameters of the model in a Hugging Face folder (its config, built on the meta device: no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in net.parameters())


def limit_share(tokens_per_s: float, parameters: int, flops: float, work: str = "decode") -> float:
    """Measured speed as a share of the compute limit: tokens/s x FLOP per token / machine FLOP/s."""
    return tokens_per_s * FLOP_PER_TOKEN[work] * parameters / flops if flops > 0 else 0.0


def describe(tokens_per_s: float, parameters: int, flops: float, work: str = "decode") -> str:
    """One line for a benchmark: the share of the limit and the limit in tokens/s."""
    limit = flops / (FLOP_PER_TOKEN[work] * parameters)
    return (f"{limit_share(tokens_per_s, parameters, flops, work):.2%} of the {work} compute limit "
            f"({limit:,.0f} tok/s at {flops / 1e9:,.1f} GFLOP/s)")
