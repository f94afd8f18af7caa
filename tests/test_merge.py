"""Folding LoRA adapters into served weights (``model.merge``) and choosing how a push reaches the engines
(``engines.push_mode``): the folded model computes what the adapter model computes, and what cannot fold is
refused with its reason."""

from __future__ import annotations

import pytest
import torch

from regenesis_pl.engines.push_mode import Probe, check_push_settings, measured_choice, static_choice
from regenesis_pl.model.merge import CannotMerge, lora_scalings, served_state_dict


def tiny_llama(tied: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(config).eval()


def with_lora(net, **kwargs):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, lora_dropout=0.0,
                        **kwargs)
    return get_peft_model(net, config).eval()


@pytest.mark.parametrize("tied", [True, False])
def test_folded_weights_compute_what_the_adapter_computes(tied):
    net = with_lora(tiny_llama(tied), rank_pattern={"q_proj": 8}, alpha_pattern={"o_proj": 2})
    scalings = lora_scalings(net)
    assert len(set(scalings.values())) > 1  # the per-layer patterns are read, not one global alpha / r
    state = served_state_dict(net.state_dict(), torch.float32, tied, scalings)
    assert not any("lora" in k or "base_layer" in k for k in state)
    assert ("lm_head.weight" in state) is not tied  # a tied head is not written twice

    plain = tiny_llama(tied)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        expected, folded, base = net(ids).logits, plain(ids).logits, tiny_llama(tied)(ids).logits
    assert not torch.allclose(expected, base, atol=1e-3)  # the adapter matters, so agreement means something
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)


def test_folding_leaves_the_training_weights_untouched_and_casts_to_the_engine_dtype():
    net = with_lora(tiny_llama())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = served_state_dict(net.state_dict(), torch.bfloat16, True, lora_scalings(net))
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_full_weights_pass_through_renamed_nowhere():
    net = tiny_llama(tied=False)
    state = served_state_dict(net.state_dict(), torch.float16, False)
    assert set(state) == set(net.state_dict()) and state["lm_head.weight"].dtype == torch.float16


def test_what_cannot_fold_is_refused_with_the_reason():
    with pytest.raises(CannotMerge, match="DoRA"):
        lora_scalings(with_lora(tiny_llama(), use_dora=True))
    net = with_lora(tiny_llama())
    state = dict(net.state_dict())
    key = next(k for k in state if k.endswith("q_proj.base_layer.weight"))
    state[key] = torch.zeros(state[key].numel() // 2, 1, dtype=torch.uint8)  # as a 4-bit packed base is stored
    with pytest.raises(CannotMerge, match="quantized"):
        served_state_dict(state, torch.float32, True, lora_scalings(net))
    with pytest.raises(CannotMerge, match="no LoRA scaling"):
        served_state_dict(net.state_dict(), torch.float32, True, {})


def test_push_choice_before_and_after_measuring():
    assert static_choice("auto", "full", None)[0] == "weights"
    assert static_choice("adapter", "lora", None)[0] == "adapter"
    assert static_choice("merged", "lora", None)[0] == "merged"
    assert static_choice("auto", "lora", None)[0] is None  # auto measures
    assert static_choice("auto", "qlora", None)[0] is None  # a QLoRA adapter folds into its dequantized base
    choice, reason = static_choice("auto", "lora", "LoRA layer x is DoRA")
    assert choice == "adapter" and "DoRA" in reason
    with pytest.raises(ValueError, match="push=merged.*DoRA.*push: adapter"):
        static_choice("merged", "lora", "LoRA layer x is DoRA")
    with pytest.raises(ValueError, match="push='fast' is unknown"):
        static_choice("fast", "lora", None)

    slow, fast = Probe(400, 10.0, ["a", "b"]), Probe(400, 3.0, ["a", "c"])
    choice, reason = measured_choice(slow, fast)
    assert choice == "merged" and "3.33x" in reason and "identical greedy texts 1/2" in reason
    choice, reason = measured_choice(fast, Probe(400, 2.9, ["a", "b"]))  # 1.03x: not worth a reload per push
    assert choice == "adapter" and "1.03x" in reason


def test_push_settings_that_would_fail_at_the_first_push_are_refused_up_front():
    check_push_settings("auto", "vllm", "lora", 16, 16)
    check_push_settings("merged", "vllm", "lora", 64, 16)  # merged weights need no LoRA slot
    check_push_settings("auto", "vllm", "full", 0, 16)
    check_push_settings("adapter", "transformers", "lora", 64, 16)  # peft serves any rank
    with pytest.raises(ValueError, match=r"lora_r=64 > generation.engine.max_lora_rank=16.*raise max_lora_rank"):
        check_push_settings("auto", "vllm", "lora", 64, 16)
    check_push_settings("merged", "vllm", "qlora", 64, 16)  # folded into the dequantized 4-bit base
