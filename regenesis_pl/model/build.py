"""Build the model to fine-tune: full weights, LoRA on a frozen base, or LoRA on a 4-bit NF4 base (QLoRA).

Weights load from safetensors only. Before loading, a memory estimate (parameters x bytes for the mode)
is compared with what the device has free, so a model that cannot fit fails at once with what to change.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

from regenesis_pl.model_source import resolve_model

Mode = Literal["full", "lora", "qlora"]
MODES = ("full", "lora", "qlora")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GIB = 1024**3


def resolve_dtype(dtype: str, mode: str, device: torch.device | str | None = None) -> torch.dtype:
    """Weight dtype for ``dtype`` ("auto", "float32", "bfloat16", "float16").

    "auto": float32 on CPU (this kind of CPU has no bf16 units: bf16 matmuls were 4-70x slower) and for full
    fine-tuning anywhere (the AdamW master weights must keep small updates; run the Trainer with
    ``precision="bf16-mixed"`` for speed); bfloat16 for the frozen base of LoRA/QLoRA on CUDA.
    """
    if dtype == "auto":
        on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
        return torch.bfloat16 if on_cuda and mode != "full" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: use one of 'auto', {', '.join(repr(d) for d in DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(model: str = "embedded", trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token (the eos token when the model defines none).

    Args:
        model: "embedded", a local model folder or a hub id.
        trust_remote_code: Allow custom tokenizer code from the model folder.
    """
    from transformers import AutoTokenizer

    path = resolve_model(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise _load_error(path, err) from err
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer of {path!r} has neither a pad nor an eos token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(model: str, trust_remote_code: bool = False) -> int:
    """Parameter count of a model from its config alone (built on the meta device, no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(resolve_model(model), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in skeleton.parameters())


def estimate_memory(n_params: int, mode: str, dtype: torch.dtype, shards: int = 1) -> int:
    """Bytes for weights, gradients and AdamW states (activations not included).

    full: weights + gradients + two AdamW moments, all in ``dtype``, split over ``shards`` (FSDP);
    lora: the frozen base in ``dtype`` (the adapters are tiny); qlora: about 0.6 byte per parameter (NF4 with
    double-quantized scales, embeddings kept in higher precision).
    """
    width = torch.finfo(dtype).bits // 8
    if mode == "full":
        return n_params * width * 4 // max(1, shards)
    if mode == "lora":
        return n_params * width
    return int(n_params * 0.6)


def available_memory(device: torch.device | str) -> int:
    """Free bytes on ``device``: CUDA free memory, or the host's MemAvailable for CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(model: str, mode: str, dtype: torch.dtype, device: torch.device | str, shards: int = 1,
               headroom: float = 1.2, trust_remote_code: bool = False) -> None:
    """Raise a one-line MemoryError when the estimate (x ``headroom`` for activations) exceeds free memory."""
    n_params = count_parameters(model, trust_remote_code)
    need = estimate_memory(n_params, mode, dtype, shards) * headroom
    free = available_memory(device)
    if need > free:
        hints = {"full": "use mode='lora' or 'qlora', or FSDP over more GPUs",
                 "lora": "use mode='qlora' or dtype='bfloat16' on a GPU",
                 "qlora": "use a smaller model or a larger GPU"}[mode]
        raise MemoryError(f"model {model!r} ({n_params / 1e9:.2f}B params) needs about {need / GIB:.1f} GiB for "
                          f"mode={mode} in {str(dtype).removeprefix('torch.')} but {torch.device(device)} has "
                          f"{free / GIB:.1f} GiB free; {hints}, and keep max_length small / "
                          "gradient_checkpointing=True (or pass check_memory=False to try anyway)")


def build_model(model: str = "embedded", mode: Mode = "lora", dtype: str = "auto", lora_r: int = 16,
                lora_alpha: int = 32, lora_dropout: float = 0.05, target_modules: list[str] | str = "all-linear",
                gradient_checkpointing: bool = False, trust_remote_code: bool = False,
                device: torch.device | str | None = None, memory_shards: int = 1, check_memory: bool = True):
    """Load a causal LM ready to train in ``mode``.

    Args:
        model: "embedded", a local model folder or a hub id (safetensors weights only).
        mode: "full" (every weight trains), "lora" (LoRA adapters on a frozen base) or "qlora" (LoRA on a
            4-bit NF4 base through bitsandbytes).
        dtype: Weight dtype: "auto" (see ``resolve_dtype``), "float32", "bfloat16" or "float16". For QLoRA
            it is the compute dtype.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: Dropout on the LoRA input.
        target_modules: Modules that get adapters: "all-linear" (every linear layer but the output head) or
            a list of module names (e.g. ["q_proj", "v_proj"]).
        gradient_checkpointing: Recompute activations in backward (less memory, ~20% slower).
        trust_remote_code: Allow custom model code from the model folder.
        device: Where to load the weights (default: CPU; QLoRA on CUDA loads straight to the GPU).
        memory_shards: Processes the full weights are sharded over (FSDP), for the memory check.
        check_memory: Refuse early when the estimate does not fit the free memory.

    Returns:
        A ``transformers`` model (mode "full") or a ``peft.PeftModel`` (LoRA/QLoRA).
    """
    from transformers import AutoModelForCausalLM

    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use 'full', 'lora' or 'qlora'")
    device = torch.device(device) if device is not None else torch.device("cpu")
    torch_dtype = resolve_dtype(dtype, mode, device)
    path = resolve_model(model)
    if check_memory:
        check_fits(path, mode, torch_dtype, device, memory_shards, trust_remote_code=trust_remote_code)
    kwargs = {"dtype": torch_dtype, "use_safetensors": True, "trust_remote_code": trust_remote_code}
    if mode == "qlora":
        kwargs["quantization_config"] = _nf4_config(torch_dtype)
        kwargs["device_map"] = {"": device}
    try:
        net = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise _load_error(path, err) from err
    net.config.use_cache = False
    gc_kwargs = {"use_reentrant": False}
    if mode == "full":
        return _train_every_weight(net, gradient_checkpointing).to(device)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if mode == "qlora":
        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=gradient_checkpointing,
                                              gradient_checkpointing_kwargs=gc_kwargs)
    else:
        net.requires_grad_(False)
        if gradient_checkpointing:
            net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
            net.enable_input_require_grads()
        net = net.to(device)
    config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        target_modules=target_modules, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(net, config)


def build_skeleton(model: str = "embedded", dtype: str = "auto", gradient_checkpointing: bool = False,
                   trust_remote_code: bool = False):
    """The model ``build_model(mode="full")`` gives, with its parameters on the meta device: no weights read and
    no memory taken, to be sharded before any weights arrive (``strategy.build_sharded_fsdp2``). Its buffers are
    computed for real (rotary tables are not in a checkpoint, so they could not be loaded later)."""
    from accelerate import init_empty_weights  # a peft dependency
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model(model)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        net = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype, "full"),
                                               trust_remote_code=trust_remote_code)
    net.tie_weights()  # from_config under init_empty_weights leaves a tied head untied
    net.config.use_cache = False
    return _train_every_weight(net, gradient_checkpointing)


def _train_every_weight(net, gradient_checkpointing: bool):
    """Full fine-tuning: every weight trains; activations are recomputed in backward when asked."""
    net.requires_grad_(True)
    if gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return net


def _nf4_config(compute_dtype: torch.dtype):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError("mode='qlora' needs bitsandbytes: pip install 'regenesis_pl[qlora]'") from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def _load_error(path: str, err: OSError) -> OSError:
    if os.path.isdir(path):
        return OSError(f"could not load {path!r}: {str(err).splitlines()[0]} (safetensors weights are required; "
                       "convert .bin checkpoints with save_pretrained(safe_serialization=True))")
    from regenesis_pl.model_source import hub_load_error

    return hub_load_error(path, err)
