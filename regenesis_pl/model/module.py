"""The LightningModule: supervised fine-tuning of a causal LM on assistant tokens (full, LoRA or QLoRA).

Thin on purpose: the model is built in ``configure_model`` (so the strategy decides where it lives), the
loss comes from the model itself (labels are -100 outside the assistant replies), and the optimizer is
AdamW with linear warmup then cosine (or linear) decay to ``min_lr_ratio``. In LoRA/QLoRA modes a
checkpoint holds the adapter weights only (plus optimizer and loop state), never the frozen base; resuming
from it reloads the base from ``model`` and restores the adapters exactly.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import FSDPStrategy

from regenesis_pl.data.sft import IGNORE_INDEX
from regenesis_pl.hashing import tensors_digest
from regenesis_pl.model.build import MODES, build_model, build_skeleton, load_tokenizer, resolve_dtype
from regenesis_pl.model.strategy import build_sharded_fsdp2, check_strategy, is_fsdp2, shard_fsdp2
from regenesis_pl.model_source import resolve_model

log = logging.getLogger(__name__)

SCHEDULERS = ("cosine", "linear", "constant")


class SFTModule(LightningModule):
    """Fine-tunes a causal LM on tokenized SFT batches (``regenesis_pl.data.sft.SFTCollator`` output).

    Args:
        base_model: The model to fine-tune: "embedded" (SmolLM2-135M-Instruct), a local model folder or a hub id.
        mode: "full" (all weights), "lora" (adapters on a frozen base) or "qlora" (adapters on a 4-bit base).
        dtype: Weight dtype: "auto" (float32 on CPU and for full fine-tuning, bfloat16 base for LoRA/QLoRA on
            CUDA), "float32", "bfloat16" or "float16".
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha (scale = alpha / r).
        lora_dropout: Dropout on the LoRA input.
        target_modules: Modules with adapters: "all-linear" or a list of names such as ["q_proj", "v_proj"].
        gradient_checkpointing: Recompute activations in backward (not with FSDP: use its activation
            checkpointing).
        trust_remote_code: Allow custom model code from the model folder.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay on matrices (biases and norms get none).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_ratio: Share of the schedule spent warming up linearly from ~0 to ``lr``.
        min_lr_ratio: Final learning rate as a share of ``lr``.
        scheduler: "cosine", "linear" (decay after warmup) or "constant" (after warmup).
        scheduler_steps: Optimizer steps of one schedule; None = the whole fit
            (``trainer.estimated_stepping_batches``). Set it to one round's steps when rounds restart.
        check_memory: Refuse to load a model whose estimated training memory exceeds the free memory.
    """

    def __init__(self, base_model: str = "embedded", mode: Literal["full", "lora", "qlora"] = "lora",
                 dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto", lora_r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05,
                 target_modules: list[str] | str = "all-linear", gradient_checkpointing: bool = False,
                 trust_remote_code: bool = False, lr: float = 2e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, warmup_ratio: float = 0.03,
                 min_lr_ratio: float = 0.1, scheduler: Literal["cosine", "linear", "constant"] = "cosine",
                 scheduler_steps: int | None = None, check_memory: bool = True) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"SFTModule: mode={mode!r}; use 'full', 'lora' or 'qlora'")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"SFTModule: scheduler={scheduler!r}; use one of {SCHEDULERS}")
        if not (lr > 0 and 0 <= warmup_ratio < 1 and 0 <= min_lr_ratio <= 1):
            raise ValueError(f"SFTModule: need lr > 0 (got {lr}), warmup_ratio in [0, 1) (got {warmup_ratio}) "
                             f"and min_lr_ratio in [0, 1] (got {min_lr_ratio})")
        self.save_hyperparameters()
        self.mode = mode
        self.scheduler_steps = scheduler_steps
        self.model: torch.nn.Module | None = None
        self._tokenizer = None
        self._tick: float | None = None

    # ----------------------------------------------------------------- building
    @property
    def adapter_only(self) -> bool:
        """True in LoRA/QLoRA modes: only the adapters train and go into checkpoints."""
        return self.mode != "full"

    @property
    def tokenizer(self):
        """The model's tokenizer (loaded once; pad token set)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.hparams.base_model, self.hparams.trust_remote_code)
        return self._tokenizer

    def _fsdp(self) -> bool:
        """Sharded weights (FSDP1 or FSDP2): full state dicts are gathered with a collective call."""
        return self._trainer is not None and (isinstance(self.trainer.strategy, FSDPStrategy)
                                              or is_fsdp2(self.trainer.strategy))

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        device, shards = None, 1
        if self._trainer is not None:
            strategy = self.trainer.strategy
            check_strategy(strategy, self.mode, hp.gradient_checkpointing, strategy.root_device.type,
                           self.trainer.world_size)
            if self._fsdp():
                shards = self.trainer.world_size
            else:
                device = strategy.root_device
        def build():
            return build_model(hp.base_model, self.mode, hp.dtype, hp.lora_r, hp.lora_alpha, hp.lora_dropout,
                               hp.target_modules, hp.gradient_checkpointing, hp.trust_remote_code,
                               device=device, memory_shards=shards, check_memory=hp.check_memory)

        if self._trainer is not None and is_fsdp2(self.trainer.strategy):
            mesh = self.device_mesh["data_parallel"]
            if mesh.size() != self.trainer.world_size:  # else gradients would never be synchronized
                raise ValueError(f"FSDP2: the data-parallel mesh has {mesh.size()} of {self.trainer.world_size} "
                                 "processes; set trainer.strategy.data_parallel_size to the number of processes and "
                                 "tensor_parallel_size: 1 (ModelParallelStrategy's defaults shard over nodes only)")
            if self.mode == "full":  # rank 0 loads the weights once; every rank holds only its shards
                skeleton = partial(build_skeleton, hp.base_model, hp.dtype, hp.gradient_checkpointing,
                                   hp.trust_remote_code)
                self.model = build_sharded_fsdp2(build, skeleton, mesh, self.trainer.strategy.root_device,
                                                 self.trainer.global_rank)
            else:
                self.model = shard_fsdp2(build(), mesh)  # Lightning moves the shards to the device
        else:
            self.model = build()
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps module modes as they are

    # ----------------------------------------------------------------- steps
    def forward(self, batch: dict[str, torch.Tensor]):
        """Model output with ``.loss`` (mean over label tokens); packed batches attend within each record."""
        if self.model is None:
            raise RuntimeError("SFTModule: the model is not built yet; call configure_model() first")
        packed = "position_ids" in batch
        return self.model(input_ids=batch["input_ids"], labels=batch["labels"],
                          attention_mask=None if packed else batch["attention_mask"],
                          position_ids=batch.get("position_ids"))

    def on_fit_start(self) -> None:
        """One line in place of Lightning's model summary table (shown with ``--verbose``)."""
        if self.trainer.is_global_zero:
            counts = [(p.numel(), p.requires_grad) for p in self.parameters()]
            log.info("model: %s (%s), %.1f M of %.1f M parameters trained", self.hparams.base_model, self.mode,
                     sum(n for n, grad in counts if grad) / 1e6, sum(n for n, _ in counts) / 1e6)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=size)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._tick is None:
            self._tick = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        now = time.perf_counter()
        tokens = float(batch["attention_mask"].sum())
        self.log("train/tokens_per_s", tokens / max(now - self._tick, 1e-9), prog_bar=True,
                 batch_size=batch["input_ids"].shape[0])
        # the epoch's training tokens, summed over steps and processes (a study compares arms by this budget)
        self.log("train/tokens", tokens, reduce_fx="sum", on_step=False, on_epoch=True, sync_dist=True)
        self._tick = now

    def on_train_epoch_end(self) -> None:
        self._tick = None  # do not count validation or data reloads as training time

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._held_out_loss(batch, "val/loss")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """``regenesis test``: the held-out loss (task accuracy comes from the evaluation callback)."""
        return self._held_out_loss(batch, "test/loss")

    def _held_out_loss(self, batch: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        loss = self(batch).loss
        targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        self.log(name, loss, prog_bar=True, batch_size=max(targets, 1), sync_dist=True)
        return loss

    # ----------------------------------------------------------------- optimizer
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Norm clipping also under FSDP1, whose Lightning precision plugin refuses it: the wrapped module clips
        its sharded gradients on every rank (``FullyShardedDataParallel.clip_grad_norm_``). FSDP2 and the
        other strategies clip the usual way (FSDP2's parameters are DTensors, which ``clip_grad_norm_`` takes)."""
        if gradient_clip_val and isinstance(getattr(self._trainer, "strategy", None), FSDPStrategy):
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(f"trainer.gradient_clip_algorithm={gradient_clip_algorithm!r} with FSDP: only 'norm' "
                                 "clipping works on sharded gradients")
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def configure_optimizers(self):
        hp = self.hparams
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("SFTModule: no trainable parameters; check mode and target_modules")
        groups = [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": hp.weight_decay},
                  {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.lr, betas=tuple(hp.betas),
                                      eps=hp.eps)
        total = self.scheduler_steps or self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(f"SFTModule: cannot size the LR schedule ({total} steps); set Trainer(max_steps=...) "
                             "or scheduler_steps")
        schedule = lr_lambda(int(total), hp.warmup_ratio, hp.min_lr_ratio, hp.scheduler)
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}

    # ----------------------------------------------------------------- checkpoints
    def trainable_names(self) -> set[str]:
        """Names (as in ``state_dict``) of the trainable parameters."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["regenesis"] = {"mode": self.mode, "model": str(self.hparams.base_model),
                                   "adapter_only": self.adapter_only}
        if self.adapter_only:
            keep = self.trainable_names()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("regenesis", {}).get("mode")
        if saved is not None and saved != self.mode:
            raise ValueError(f"checkpoint was saved with mode={saved!r} but this module has mode={self.mode!r}; "
                             "use the same mode to resume")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Full mode: the usual load. LoRA/QLoRA: every trainable tensor must be present (the frozen base may be
        absent, as in adapter-only checkpoints); unknown keys are an error."""
        if not self.adapter_only or self.model is None:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        missing = self.trainable_names() - set(state_dict)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} of {len(self.trainable_names())} adapter tensors "
                             f"(e.g. {min(missing)}); check lora_r/target_modules/mode match the run "
                             "that saved it")
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if result.unexpected_keys:
            raise ValueError(f"checkpoint has {len(result.unexpected_keys)} tensors this model lacks "
                             f"(e.g. {result.unexpected_keys[0]}); was it saved from another model?")
        return torch.nn.modules.module._IncompatibleKeys([], [])

    # ----------------------------------------------------------------- export and reset
    def save_adapter(self, path: str | Path) -> Path:
        """Write the LoRA adapter (peft format, safetensors) and the tokenizer to ``path`` (rank 0 only)."""
        if not self.adapter_only:
            raise ValueError("save_adapter: mode='full' has no adapter; use export_hf(path)")
        path = Path(path)
        if self._is_writer():
            self.model.save_pretrained(path, safe_serialization=True)
            self.tokenizer.save_pretrained(path)
        return path

    def export_hf(self, path: str | Path, merged: bool = False) -> Path:
        """Write a Hugging Face folder: the adapter (LoRA/QLoRA, ``merged=False``), or full safetensors weights
        (full mode, or LoRA merged into a freshly loaded unquantized base), with tokenizer and chat template.

        Under FSDP call it on every rank (the full weights are gathered); only rank 0 writes.
        """
        path = Path(path)
        if self.adapter_only and not merged:
            return self.save_adapter(path)
        if self.adapter_only:
            net = self._merged_copy()
            state = None
        else:
            net, state = self.model, self._full_state_dict()
        if self._is_writer():
            use_cache = net.config.use_cache
            net.config.use_cache = True
            try:
                net.save_pretrained(path, state_dict=state, safe_serialization=True)
            finally:
                net.config.use_cache = use_cache
            self.tokenizer.save_pretrained(path)
        return path

    def save_served_weights(self, path: str | Path, dtype: torch.dtype, base_only: bool = False) -> Path:
        """Write the weights an engine serves to ``path/model.safetensors`` in the engine's ``dtype``: the full
        weights (full mode) or the LoRA adapter folded into the base (``model.merge``; raises ``CannotMerge``
        for adapters that do not fold, such as DoRA). A QLoRA base is dequantized first: the served weights are
        the ones the adapter trains against. ``base_only``: the base without the adapter. Under FSDP call it on
        every rank; rank 0 writes.
        """
        from regenesis_pl.model.merge import (
            dequantized_state,
            lora_scalings,
            served_state_dict,
            write_served_weights,
        )

        path = Path(path)
        if not self._fsdp() and not self._is_writer():
            return path  # only an FSDP gather needs every rank; the others would build a copy for nothing
        scalings = None if not self.adapter_only else {} if base_only else lora_scalings(self.model)
        if self.mode == "qlora":
            state = dequantized_state(self.model)  # on the CPU: a dequantized 7B base would not fit beside training
        else:
            state = self._full_state_dict() if self._fsdp() else self.model.state_dict()  # on the device: folds fast
        if base_only and scalings is not None:
            state = {k: v for k, v in state.items() if ".lora_" not in k}
        if self._is_writer():
            tied = bool(getattr(self.model.config, "tie_word_embeddings", False))  # peft forwards .config
            write_served_weights(path, served_state_dict(state, dtype, tied, scalings))
        return path

    def reset_to_base(self, seed: int | None = None, reset_optimizer: bool = True) -> None:
        """Return to the base model: fresh LoRA adapters (B = 0, so outputs equal the base) or, in full mode, the
        base weights reloaded from ``model``. With a trainer attached and ``reset_optimizer``, the optimizer and
        LR schedule are rebuilt too (new AdamW moments; schedule of ``scheduler_steps``).

        Args:
            seed: Seed for the new LoRA A matrices (None: the current RNG state).
            reset_optimizer: Rebuild optimizer and scheduler when fitting.
        """
        if self.model is None:
            raise RuntimeError("reset_to_base: the model is not built yet")
        if self.adapter_only:
            from peft.tuners.lora import LoraLayer

            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed)
                for module in self.model.modules():
                    if isinstance(module, LoraLayer):
                        for name in list(module.lora_A.keys()):
                            module.reset_lora_parameters(name, init_lora_weights=True)
        else:
            self._load_full_state_dict(self._fresh_base(resolve_dtype(self.hparams.dtype, "full")).state_dict())
        if reset_optimizer and self._trainer is not None and self.trainer.optimizers:
            self.trainer.strategy.setup_optimizers(self.trainer)

    def trainable_state_fingerprint(self) -> str:
        """Short hash of the trainable weights (changes whenever training changed them); FSDP: every rank."""
        names = {n.removeprefix("model.") for n in self.trainable_names()}
        if self._fsdp():
            state = self._full_state_dict()
        else:
            state = {n.removeprefix("model."): p for n, p in self.named_parameters() if p.requires_grad}
        return tensors_digest(((n, state[n]) for n in sorted(n for n in state if n in names)), as_float32=True)

    # ----------------------------------------------------------------- helpers
    def _is_writer(self) -> bool:
        return self._trainer is None or self.trainer.is_global_zero

    def _fresh_base(self, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(resolve_model(self.hparams.base_model), dtype=dtype,
                                                    use_safetensors=True,
                                                    trust_remote_code=self.hparams.trust_remote_code)

    def _merged_copy(self):
        """The adapter merged into an unquantized copy of the base, on the CPU (training weights untouched)."""
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        dtype = resolve_dtype(self.hparams.dtype, "lora", self.device)
        adapter = {k: v.detach().to("cpu") for k, v in get_peft_model_state_dict(self.model).items()}
        twin = get_peft_model(self._fresh_base(dtype), copy.deepcopy(self.model.peft_config["default"]))
        set_peft_model_state_dict(twin, adapter)
        return twin.merge_and_unload()

    def merge_blocker(self) -> str | None:
        """None when the LoRA adapter folds into dense served weights (``save_served_weights``; a QLoRA adapter
        folds into its dequantized 4-bit base), else why not."""
        from regenesis_pl.model.merge import CannotMerge, lora_scalings

        try:
            lora_scalings(self.model)
        except CannotMerge as err:
            return str(err)
        return None

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) weights of ``self.model`` on the CPU; a collective call under FSDP."""
        if not self._fsdp():
            return {k: v.detach().to("cpu") for k, v in self.model.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.trainer.strategy.model, options=options)
        return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}

    def _load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not self._fsdp():
            self.model.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.trainer.strategy.model, {f"model.{k}": v for k, v in state.items()},
                             options=options)


def lr_lambda(total_steps: int, warmup_ratio: float, min_lr_ratio: float, kind: str):
    """LR multiplier per optimizer step: linear warmup to 1, then cosine/linear decay to ``min_lr_ratio``."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return factor
