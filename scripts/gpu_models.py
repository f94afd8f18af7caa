"""Random-weight models for the GPU check, built on the GPU machine from configs (no weights are carried there).

- ``tiny``: a 4-layer Llama-style model around the embedded model's tokenizer and chat template (from
  ``gpu_kit/tokenizer``): small enough to run the whole loop (train, push, evaluate) in seconds. Its answers
  are noise; it checks the mechanics, never accuracy.
- ``mistral7b-L<n>``: Mistral-7B-v0.3's shapes (hidden 4096, 32 heads / 8 KV heads, MLP 14336, vocab 32768)
  with ``n`` decoder layers instead of 32, in bf16. Peak training memory grows by the same amount per layer,
  so two of them (2 and 4 layers) give the 32-layer figure by a straight line, without writing 14 GB.

    python scripts/gpu_models.py --out runs/gpu_check/models [--tokenizer gpu_kit/tokenizer] [--layers 2 4]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

MISTRAL_7B = {"vocab_size": 32768, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 32768, "rope_theta": 1e6,
              "tie_word_embeddings": False}


def tiny_model(out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A small random Llama-style model with the given tokenizer and chat template, saved as safetensors."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    for name in ("chat_template.jinja",):  # keep the template file as the embedded model ships it
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


def mistral_shaped(out: Path, layers: int, seed: int = 0) -> Path:
    """Mistral-7B's shapes with ``layers`` decoder layers and random bf16 weights (built on the GPU when there
    is one: initializing on a CPU is slow), saved as safetensors. No tokenizer: memory checks feed token ids."""
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(num_hidden_layers=layers, **MISTRAL_7B)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[1] / "gpu_kit" / "tokenizer"))
    parser.add_argument("--layers", type=int, nargs="*", default=[2, 4])
    args = parser.parse_args()
    out = Path(args.out)
    print(f"gpu_models: {tiny_model(out / 'tiny', Path(args.tokenizer))}")
    for n in args.layers:
        print(f"gpu_models: {mistral_shaped(out / f'mistral7b-L{n}', n)}")


if __name__ == "__main__":
    main()
