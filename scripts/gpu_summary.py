"""Collects one GPU check's results into ``results.json`` (called by ``scripts/gpu_check.sh``).

Reads, from the check's folder: ``junit.xml`` (pass / fail / skip per test), ``figures.jsonl`` (what the tests
measured: tokens/s, push, sleep and wake times), ``gpu_memory.csv`` (``nvidia-smi`` samples: used and total
MiB) and ``missing.txt`` (what the machine lacked). Prints a short table and writes ``results.json``.

    python scripts/gpu_summary.py runs/gpu_check
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def checks(junit: Path) -> dict[str, str]:
    """``{test id: "passed" | "failed" | "skipped: <reason>"}`` from a pytest junit file."""
    if not junit.is_file():
        return {}
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        skipped = case.find("skipped")
        if case.find("failure") is not None or case.find("error") is not None:
            out[name] = "failed"
        elif skipped is not None:
            out[name] = f"skipped: {skipped.get('message', '')}"
        else:
            out[name] = "passed"
    return out


def memory(samples: Path) -> dict[str, float]:
    """Peak and idle GPU memory in GiB from ``nvidia-smi --query-gpu=memory.used,memory.total`` CSV lines."""
    used, total = [], 0.0
    if samples.is_file():
        for line in samples.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            try:
                used.append(float(parts[-2]))
                total = float(parts[-1])
            except (IndexError, ValueError):
                continue  # a header or a line cut by the kill of the sampler
    if not used:
        return {}
    return {"peak_gib": round(max(used) / 1024, 2), "first_gib": round(used[0] / 1024, 2),
            "total_gib": round(total / 1024, 2), "samples": len(used)}


def summarize(folder: Path) -> dict:
    folder = Path(folder)
    figures = []
    if (folder / "figures.jsonl").is_file():
        figures = [json.loads(line) for line in (folder / "figures.jsonl").read_text().splitlines() if line.strip()]
    results = checks(folder / "junit.xml")
    missing = (folder / "missing.txt").read_text().splitlines() if (folder / "missing.txt").is_file() else []
    summary = {"checks": results, "passed": sum(v == "passed" for v in results.values()),
               "failed": sum(v == "failed" for v in results.values()),
               "skipped": sum(v.startswith("skipped") for v in results.values()),
               "figures": figures, "gpu_memory": memory(folder / "gpu_memory.csv"), "missing": missing}
    (folder / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu_check")
    summary = summarize(folder)
    for name, verdict in summary["checks"].items():
        print(f"{verdict.split(':')[0]:>8}  {name}")
    for row in summary["figures"]:
        print("          " + ", ".join(f"{k}={v}" for k, v in row.items()))
    print(f"{summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped; GPU memory "
          f"{summary['gpu_memory'] or 'not sampled'}; results in {folder / 'results.json'}")
    sys.exit(1 if summary["failed"] or not summary["passed"] else 0)


if __name__ == "__main__":
    main()
