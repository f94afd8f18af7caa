"""Pack what the GPU check needs on a machine that has torch, lightning, transformers and peft but nothing
else (no registry, no vLLM, no model weights): run it here, where PyPI and the prepared data are, and carry
the folder to the GPU machine beside the working tree.

    python scripts/gpu_kit.py                  # writes gpu_kit/ (git-ignored), at most 60 MiB

What goes in:
- ``wheels/``: the small pure-Python packages the package and its tests import (jsonargparse and what
  LightningCLI needs of it, math-verify and its LaTeX parser, pytest), and bitsandbytes' manylinux wheel for
  QLoRA; the versions installed here, so both machines run the same ones. Installed there with
  ``pip install --no-index --no-deps`` (``scripts/gpu_check.sh`` does it).
- ``tokenizer/``: the embedded model's tokenizer and chat template (a few MB). The model weights do not fit the
  carry limit; ``scripts/gpu_models.py`` builds random-weight models around this tokenizer on the GPU machine.
- ``home/data/``: the prepared BIG-bench 2-digit additions, for the check's fits.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 60  # the device tool carries at most 64 MiB beside the working tree
# distribution names; each one's installed version is packed
WHEELS = ("bitsandbytes", "jsonargparse", "docstring-parser", "typeshed-client", "math-verify",
          "latex2sympy2-extended", "antlr4-python3-runtime", "pytest", "pluggy", "iniconfig", "pygments",
          "pytest-timeout")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")
DATA_TASKS = ("bigbench/arithmetic/2_digit_addition",)


def pinned(names=WHEELS) -> list[str]:
    """``name==version`` for each distribution as installed in this environment (one line error if one is not)."""
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise SystemExit(f"gpu_kit: {name} is not installed here; run scripts/setup.sh first") from None
    return out


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def build_kit(out: Path, home: Path, model_dir: Path, download: bool = True) -> dict:
    """Write the kit into ``out`` and return its manifest (what is in it and its size)."""
    if out.exists():
        shutil.rmtree(out)
    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    specs = pinned()
    if download:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels),
               "--platform", "manylinux_2_24_x86_64", "--python-version", "3.10", "--implementation", "py", *specs]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
            raise SystemExit(f"gpu_kit: pip download failed ({last}); check access to PyPI")
    tokenizer = out / "tokenizer"
    tokenizer.mkdir()
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, tokenizer / name)
    if not (tokenizer / "tokenizer.json").is_file():
        raise SystemExit(f"gpu_kit: no tokenizer in {model_dir}; run `regenesis prepare model` first")
    for task in DATA_TASKS:
        source = home / "data" / task
        if not (source / "provenance.json").is_file():
            raise SystemExit(f"gpu_kit: {source} is not prepared; run `regenesis prepare data bigbench --tasks "
                             "arithmetic` first")
        shutil.copytree(source, out / "home" / "data" / task)
    manifest = {"wheels": sorted(p.name for p in wheels.iterdir()), "pinned": specs,
                "tokenizer": sorted(p.name for p in tokenizer.iterdir()), "data": list(DATA_TASKS),
                "mib": round(folder_mib(out), 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if manifest["mib"] > LIMIT_MIB:
        raise SystemExit(f"gpu_kit: {out} holds {manifest['mib']} MiB, more than the {LIMIT_MIB} MiB a carry takes")
    return manifest


def main() -> None:
    from regenesis_pl.embedded_model import prepare_embedded_model
    from regenesis_pl.paths import home_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "gpu_kit"))
    args = parser.parse_args()
    manifest = build_kit(Path(args.out), home_dir(), prepare_embedded_model())
    print(f"gpu_kit: {args.out}: {len(manifest['wheels'])} wheels, tokenizer, {len(manifest['data'])} task(s), "
          f"{manifest['mib']} MiB")


if __name__ == "__main__":
    main()
