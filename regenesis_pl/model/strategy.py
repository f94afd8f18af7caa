"""How training is spread over devices: one device ("auto"), data parallel ("ddp"), or FSDP for full fine-tuning.

FSDP wraps each decoder layer of the model in its own shard unit and checkpoints activations per layer;
the layer class is read from the model itself (its ``_no_split_modules``, else the class of the entries
of its layer list), built on the meta device so no weights are loaded to find it. Combinations that cannot
work are refused with a one-line error naming the combination and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from torch import nn

from regenesis_pl.model_source import resolve_model

StrategyName = Literal["auto", "ddp", "fsdp"]


def decoder_layer_classes(model: str = "embedded", trust_remote_code: bool = False) -> set[type[nn.Module]]:
    """The decoder layer class(es) of ``model`` (e.g. ``{LlamaDecoderLayer}``), found without loading weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(resolve_model(model), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return find_layer_classes(skeleton)


def find_layer_classes(net: nn.Module) -> set[type[nn.Module]]:
    """Classes named in ``net._no_split_modules`` that occur in ``net``; else the class of the first repeated
    block list (a ``ModuleList`` of one class with more than one entry)."""
    names = set(getattr(net, "_no_split_modules", None) or ())
    found = {type(m) for m in net.modules() if type(m).__name__ in names}
    if found:
        return found
    for module in net.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            return {type(module[0])}
    raise ValueError(f"cannot find the decoder layer class of {type(net).__name__} (no _no_split_modules and no "
                     "repeated layer list); pass the classes to FSDPStrategy(auto_wrap_policy=...) yourself")


class DecoderLayerFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP strategy with the wrap and activation-checkpointing policy set to the model's decoder
    layer class; usable from a config (``class_path: regenesis_pl.model.strategy.DecoderLayerFSDPStrategy``).

    Args:
        model: The model being trained ("embedded", folder or hub id), read only to find its layer class.
        activation_checkpointing: Recompute each decoder layer's activations in backward (use this instead of
            the module's ``gradient_checkpointing`` under FSDP).
        sharding_strategy: "FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD" or "HYBRID_SHARD".
        state_dict_type: "sharded" (each rank writes its shard; fast, a folder) or "full" (one file on rank 0).
        cpu_offload: Keep parameters and gradients on the CPU between uses.
        trust_remote_code: Allow custom model code when reading the model's config.
        **kwargs: Passed on to ``lightning.pytorch.strategies.FSDPStrategy``.
    """

    def __init__(self, model: str = "embedded", activation_checkpointing: bool = True,
                 sharding_strategy: str = "FULL_SHARD", state_dict_type: Literal["full", "sharded"] = "sharded",
                 cpu_offload: bool = False, trust_remote_code: bool = False, **kwargs) -> None:
        layers = decoder_layer_classes(model, trust_remote_code)
        self.layer_classes = layers
        super().__init__(auto_wrap_policy=set(layers),
                         activation_checkpointing_policy=set(layers) if activation_checkpointing else None,
                         sharding_strategy=sharding_strategy, state_dict_type=state_dict_type,
                         cpu_offload=cpu_offload, **kwargs)


def check_strategy(strategy: Strategy | str, mode: str, gradient_checkpointing: bool = False,
                   device_type: str | None = None, num_processes: int = 1) -> None:
    """Refuse combinations of strategy and training mode that cannot work, with a one-line error.

    Args:
        strategy: A Lightning strategy, or its name ("auto", "ddp", "fsdp").
        mode: "full", "lora" or "qlora".
        gradient_checkpointing: The module's own gradient checkpointing flag.
        device_type: "cpu" or "cuda" (None: not checked). FSDP needs an accelerator.
        num_processes: Processes the strategy runs.
    """
    fsdp2 = is_fsdp2(strategy)
    is_fsdp = fsdp2 or isinstance(strategy, FSDPStrategy) or (isinstance(strategy, str) and strategy.startswith("fsdp"))
    if not is_fsdp:
        return
    if mode == "qlora":
        raise ValueError("strategy=fsdp with mode=qlora cannot work here: FSDP cannot shard bitsandbytes 4-bit "
                         "weights; use strategy=auto/ddp for QLoRA, or mode=full with FSDP")
    if mode == "lora":
        raise ValueError("strategy=fsdp with mode=lora is not supported (adapter-only checkpoints assume an "
                         "unsharded model); use strategy=auto/ddp for LoRA, or mode=full with FSDP")
    if gradient_checkpointing:
        raise ValueError("strategy=fsdp with gradient_checkpointing=True: the model's own checkpointing clashes "
                         "with FSDP wrapping; set gradient_checkpointing=False and use the strategy's "
                         "activation_checkpointing=True")
    if device_type == "cpu" and not fsdp2:
        raise ValueError(f"strategy=fsdp on CPU ({num_processes} process(es)) cannot work: torch's FSDP (FSDP1) "
                         "refuses to run without an accelerator ('FSDP needs a non-CPU accelerator device'); use "
                         "GPUs, or FSDP2 (trainer.strategy: lightning.pytorch.strategies.ModelParallelStrategy), "
                         "which shards on CPU too")


def is_fsdp2(strategy: Strategy | str) -> bool:
    """Whether ``strategy`` is Lightning's ``ModelParallelStrategy``: FSDP2 (``fully_shard``), applied by the
    module in ``configure_model`` (one shard unit per decoder layer, then the whole model)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(strategy, ModelParallelStrategy)


def shard_fsdp2(net: nn.Module, mesh) -> nn.Module:
    """FSDP2: shard each decoder layer, then the rest of the model, over the data-parallel ``mesh``."""
    from torch.distributed.fsdp import fully_shard

    layers = find_layer_classes(net)
    for module in list(net.modules()):
        if isinstance(module, tuple(layers)):
            fully_shard(module, mesh=mesh)
    fully_shard(net, mesh=mesh)
    return net


def build_sharded_fsdp2(build_full: Callable[[], nn.Module], build_skeleton: Callable[[], nn.Module], mesh,
                        device: torch.device, rank: int) -> nn.Module:
    """FSDP2 without a full copy of the weights in every process: each rank builds the model with its parameters
    on the meta device (``build_skeleton``), shards it and allocates only its own shards; rank 0 alone loads the
    weights (``build_full``: one full copy, in its host memory) and they reach every rank shard by shard."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full, failure = {}, [None]
    if rank == 0:
        try:
            full = build_full().state_dict()
        except Exception as err:  # the other ranks would wait in the broadcast below until the group times out
            failure = [f"{type(err).__name__}: {err}"]
            raise
        finally:
            dist.broadcast_object_list(failure, src=0)
    else:
        dist.broadcast_object_list(failure, src=0)
        if failure[0] is not None:
            raise RuntimeError(f"rank 0 could not load the model's weights ({failure[0]}); see rank 0's error")
    net = shard_fsdp2(build_skeleton(), mesh)
    buffers = {name: value.detach().clone() for name, value in net.named_buffers()}
    net.to_empty(device=device)  # allocates the shards; buffers get fresh memory too, so they are put back
    with torch.no_grad():
        for name, value in buffers.items():
            net.get_buffer(name).copy_(value)
    set_model_state_dict(net, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return net
