"""SFTModule with the real embedded model and a real Trainer.fit: LoRA learning, adapter-only checkpoints and
exact resume, merged export, reset to base, QLoRA and full fine-tuning steps; strategy config checks."""

from __future__ import annotations

import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from regenesis_pl.chat import sft_messages
from regenesis_pl.data.sft import LengthGroupedBatchSampler, SFTCollator, SFTDataset, encode_conversations
from regenesis_pl.model.module import SFTModule, lr_lambda
from regenesis_pl.model.strategy import DecoderLayerFSDPStrategy, check_strategy, find_layer_classes
from regenesis_pl.tasks.types import AnswerType, Question

torch.set_num_threads(2)


# ------------------------------------------------------------------ pure
def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = lr_lambda(100, warmup_ratio=0.1, min_lr_ratio=0.1, kind="cosine")
    assert f(0) < f(5) < f(9) <= 1.0 and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert lr_lambda(10, 0.0, 0.0, "linear")(5) == pytest.approx(0.5)
    assert lr_lambda(10, 0.0, 0.1, "constant")(9) == 1.0


def test_module_rejects_bad_settings():
    with pytest.raises(ValueError, match="mode='8bit'"):
        SFTModule(mode="8bit")
    with pytest.raises(ValueError, match="scheduler='step'"):
        SFTModule(scheduler="step")


def test_qlora_without_bitsandbytes_names_the_extra(monkeypatch):
    import sys

    from regenesis_pl.model.build import _nf4_config

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError, as if not installed
    with pytest.raises(ImportError, match=r"mode='qlora' needs bitsandbytes: pip install 'regenesis_pl\[qlora\]'"):
        _nf4_config(torch.float32)


def test_strategy_refuses_combinations_that_cannot_work():
    with pytest.raises(ValueError, match="fsdp with mode=qlora"):
        check_strategy("fsdp", "qlora", device_type="cuda", num_processes=2)
    with pytest.raises(ValueError, match="fsdp with mode=lora"):
        check_strategy("fsdp", "lora", device_type="cuda")
    with pytest.raises(ValueError, match="gradient_checkpointing=True"):
        check_strategy("fsdp", "full", gradient_checkpointing=True, device_type="cuda")
    with pytest.raises(ValueError, match="FSDP needs a non-CPU accelerator device.*ModelParallelStrategy"):
        check_strategy("fsdp", "full", device_type="cpu", num_processes=2)
    check_strategy("fsdp", "full", device_type="cuda", num_processes=8)  # the supported cases pass
    check_strategy("ddp", "qlora", device_type="cpu", num_processes=2)
    from lightning.pytorch.strategies import ModelParallelStrategy

    fsdp2 = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    check_strategy(fsdp2, "full", device_type="cpu", num_processes=2)  # FSDP2 shards on CPU
    with pytest.raises(ValueError, match="fsdp with mode=lora"):
        check_strategy(fsdp2, "lora", device_type="cpu")


def test_wrap_policy_finds_the_decoder_layer_of_a_tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64)
    with torch.device("meta"):
        net = LlamaForCausalLM(config)
    assert find_layer_classes(net) == {LlamaDecoderLayer}
    with pytest.raises(ValueError, match="decoder layer class"):
        find_layer_classes(torch.nn.Linear(2, 2))


def test_memory_check_refuses_a_model_that_cannot_fit(tmp_path: Path):
    from transformers import LlamaConfig

    from regenesis_pl.model.build import check_fits, count_parameters, estimate_memory, resolve_dtype

    LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=128256).save_pretrained(tmp_path)
    n = count_parameters(str(tmp_path))
    assert 69e9 < n < 72e9  # a 70B model, counted from its config alone
    assert estimate_memory(n, "full", torch.float32) == 16 * n
    assert estimate_memory(n, "full", torch.float32, shards=8) == 2 * n
    with pytest.raises(MemoryError, match="mode='qlora'"):
        check_fits(str(tmp_path), "lora", torch.float32, "cpu")
    assert resolve_dtype("auto", "lora", "cpu") == torch.float32
    assert resolve_dtype("auto", "lora", "cuda") == torch.bfloat16
    assert resolve_dtype("auto", "full", "cuda") == torch.float32
    with pytest.raises(ValueError, match="dtype='fp8'"):
        resolve_dtype("fp8", "lora")


@pytest.mark.slow
def test_fsdp_strategy_wraps_the_embedded_models_decoder_layers():
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    strategy = DecoderLayerFSDPStrategy(model="embedded")
    assert isinstance(strategy, FSDPStrategy) and strategy.layer_classes == {LlamaDecoderLayer}
    assert isinstance(strategy.kwargs["auto_wrap_policy"], ModuleWrapPolicy)
    assert strategy._activation_checkpointing_kwargs and strategy._state_dict_type == "sharded"


# ------------------------------------------------------------------ real model, real Trainer.fit
def records(tokenizer, n: int = 4) -> list[dict[str, list[int]]]:
    convs = []
    for i in range(n):
        a, b = 11 * i + 3, 7 * i + 5
        q = Question(id=f"q{i}", task="add", text=f"What is {a} + {b}?", answer_type=AnswerType.NUMERIC,
                     answer=str(a + b))
        convs.append(sft_messages(q, f"We add {a} and {b}: {a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."))
    return encode_conversations(tokenizer, convs, max_length=256).records


def loader(module: SFTModule, n: int = 4) -> DataLoader:
    ds = SFTDataset(records(module.tokenizer, n))
    return DataLoader(ds, batch_sampler=LengthGroupedBatchSampler(ds.lengths, batch_size=2, seed=0),
                      collate_fn=SFTCollator(module.tokenizer.pad_token_id))


class Losses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def trainer(max_steps: int, root: Path, **kwargs) -> L.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=root, **kwargs)


def lora_module() -> SFTModule:
    # dropout 0 so two runs see the same numbers (Lightning checkpoints do not hold RNG state)
    return SFTModule(mode="lora", lr=2e-3, lora_dropout=0.0, warmup_ratio=0.1, scheduler_steps=10)


def adapter_state(module: SFTModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.slow
def test_lora_learns_checkpoints_adapters_only_and_resumes_exactly(tmp_path: Path):
    from regenesis_pl.model_source import resolve_model

    module = lora_module()
    losses = Losses()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1,
                                               filename="{step}")
    run = trainer(10, tmp_path, callbacks=[losses, ckpt], enable_checkpointing=True)
    dl = loader(module)
    run.fit(module, dl)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    assert len(losses.losses) == 10
    assert sum(losses.losses[-2:]) < 0.5 * sum(losses.losses[:2])  # same 2 batches every epoch
    base_bytes = os.path.getsize(Path(resolve_model("embedded")) / "model.safetensors")

    # trainable (LoRA) changed, frozen base untouched
    fresh = SFTModule(mode="lora", lora_dropout=0.0)
    fresh.configure_model()
    start = dict(fresh.named_parameters())
    changed = [n for n in module.trainable_names() if "lora_B" in n and not torch.equal(before[n], start[n])]
    assert len(changed) == sum("lora_B" in n for n in module.trainable_names()) > 0
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    assert frozen and all(torch.equal(before[n], start[n]) for n in frozen)

    # adapter-only checkpoints: small, only trainable tensors, with optimizer state
    files = {p.name: p for p in (tmp_path / "ckpt").iterdir()}
    step2, step4 = files["step=2.ckpt"], files["step=4.ckpt"]
    saved = torch.load(step4, map_location="cpu", weights_only=True)
    assert set(saved["state_dict"]) == module.trainable_names()
    assert saved["optimizer_states"][0]["state"] and saved["regenesis"]["adapter_only"]
    assert os.path.getsize(step4) < base_bytes / 5
    print(f"checkpoint {os.path.getsize(step4) / 1e6:.1f} MB vs base weights {base_bytes / 1e6:.1f} MB")

    # resume from step 2 up to step 4 == the uninterrupted run at step 4 (weights and AdamW moments)
    resumed = lora_module()
    trainer(4, tmp_path).fit(resumed, loader(resumed), ckpt_path=step2, weights_only=True)
    for name, value in adapter_state(resumed).items():
        torch.testing.assert_close(value, saved["state_dict"][name], rtol=1e-5, atol=1e-6)
    moments = resumed.trainer.optimizers[0].state_dict()["state"]
    for index, state in saved["optimizer_states"][0]["state"].items():
        torch.testing.assert_close(moments[index]["exp_avg"], state["exp_avg"], rtol=1e-5, atol=1e-7)
    assert resumed.trainer.global_step == 4

    # merged export computes what the adapter model computes; reset_to_base gives the base model back
    from transformers import AutoModelForCausalLM

    batch = next(iter(dl))
    module.eval()
    with torch.no_grad():
        trained_logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        module.export_hf(tmp_path / "merged", merged=True)
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
        merged_logits = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(merged_logits, trained_logits, rtol=1e-4, atol=2e-4)
        module.save_adapter(tmp_path / "adapter")
        assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
        assert (tmp_path / "adapter" / "chat_template.jinja").is_file()
        fingerprint = module.trainable_state_fingerprint()
        assert module.trainer.optimizers[0].state  # AdamW moments from training
        module.reset_to_base(seed=0)
        assert module.trainable_state_fingerprint() != fingerprint
        assert not module.trainer.optimizers[0].state  # rebuilt: fresh moments for a restarted round
        base_logits = fresh.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        reset_logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(reset_logits, base_logits)
        assert not torch.allclose(trained_logits, base_logits, atol=1e-2)


@pytest.mark.slow
def test_qlora_trains_on_cpu_with_adapter_only_checkpoint(tmp_path: Path):
    pytest.importorskip("bitsandbytes")
    module = SFTModule(mode="qlora", lr=2e-3, lora_dropout=0.0)
    losses = Losses()
    run = trainer(2, tmp_path, callbacks=[losses])
    run.fit(module, loader(module, n=2))
    assert len(losses.losses) == 2 and all(math.isfinite(x) for x in losses.losses)
    assert type(module.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    assert any(float(p.detach().abs().sum()) > 0 for n, p in module.named_parameters() if "lora_B" in n)
    run.save_checkpoint(tmp_path / "q.ckpt")
    saved = torch.load(tmp_path / "q.ckpt", map_location="cpu", weights_only=True)
    assert set(saved["state_dict"]) == module.trainable_names()  # no 4-bit base, no quant state


@pytest.mark.slow
def test_qlora_serves_the_weights_it_trains_against(tmp_path: Path):
    """What an engine is given for a QLoRA model computes what the model trains with: the dequantized 4-bit base
    plus the adapter gives the very logits of the training forward, the adapter folded into that base the same
    up to rounding; the original unquantized base plus the adapter is far off (the 4-bit quantization error)."""
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from regenesis_pl.model_source import resolve_model

    module = SFTModule(mode="qlora", lr=2e-3, lora_dropout=0.0)
    trainer(2, tmp_path).fit(module, loader(module, n=2))
    module.save_served_weights(tmp_path / "base", torch.float32, base_only=True)
    module.save_served_weights(tmp_path / "merged", torch.float32)
    module.save_adapter(tmp_path / "adapter")

    def dense(folder: Path | None = None):
        net = AutoModelForCausalLM.from_pretrained(resolve_model("embedded"), dtype=torch.float32)
        if folder is not None:
            missing, unexpected = net.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
            assert missing == ["lm_head.weight"] and not unexpected  # the tied head is left out
        return net.eval()

    batch = next(iter(loader(module, n=2)))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    real = batch["attention_mask"].bool()
    module.train()  # (dropout 0) an inference forward on a CPU runs bitsandbytes' bf16 kernel instead
    with torch.no_grad():
        trained = module.model(**inputs).logits[real]
        served = PeftModel.from_pretrained(dense(tmp_path / "base"), str(tmp_path / "adapter")).eval()(**inputs)
        merged = dense(tmp_path / "merged")(**inputs).logits[real]
        original = PeftModel.from_pretrained(dense(), str(tmp_path / "adapter")).eval()(**inputs).logits[real]
    torch.testing.assert_close(served.logits[real], trained, rtol=0, atol=1e-5)
    torch.testing.assert_close(merged, trained, rtol=0, atol=1e-3)
    assert float((original - trained).abs().max()) > 1.0


@pytest.mark.slow
def test_full_finetuning_steps_and_exports_full_weights(tmp_path: Path):
    module = SFTModule(mode="full", lr=1e-5, warmup_ratio=0.0)
    losses = Losses()
    run = trainer(2, tmp_path, callbacks=[losses])
    run.fit(module, loader(module, n=2))
    assert len(losses.losses) == 2 and losses.losses[1] < losses.losses[0]
    assert all(p.requires_grad for p in module.parameters())
    module.export_hf(tmp_path / "full")
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "full").state_dict()
    for name, value in module.model.state_dict().items():
        torch.testing.assert_close(exported[name], value)
    with pytest.raises(ValueError, match="no adapter"):
        module.save_adapter(tmp_path / "nope")


def test_norm_clipping_under_fsdp1_goes_through_the_wrapped_module():
    """Lightning's FSDP precision plugin refuses norm clipping; the module clips through FSDP's own method."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    calls = []
    strategy = FSDPStrategy()
    strategy._lightning_module = None
    module = SFTModule()
    module._trainer = SimpleNamespace(strategy=strategy)
    strategy.model = SimpleNamespace(clip_grad_norm_=calls.append)
    module.configure_gradient_clipping(optimizer=None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert calls == [1.0]
    with pytest.raises(ValueError, match="only 'norm' clipping"):
        module.configure_gradient_clipping(optimizer=None, gradient_clip_val=1.0, gradient_clip_algorithm="value")
