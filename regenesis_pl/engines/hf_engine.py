"""The transformers backend: batched ``generate`` with the same request semantics as the vLLM backend.

Runs anywhere transformers runs (no vLLM needed): the fallback engine and the reference the vLLM engine is
tested against. Sampling is seeded per completion, not per batch: a logits processor draws each row's token
with that row's own ``torch.Generator`` and leaves only that token possible, so ``generate`` (greedy) picks
it. A completion therefore does not depend on which other requests share its batch.
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from regenesis_pl.engines.base import Completion, Conversation, RequestOutput, SamplingConfig
from regenesis_pl.engines.fingerprint import weights_fingerprint
from regenesis_pl.engines.prompt_jobs import (
    Job,
    OutputCollector,
    cut_at_stop,
    encode_prompts,
    engine_dtype,
    load_chat_tokenizer,
    make_jobs,
)


class _SeededRowSampler:
    """Logits processor: sample each row with its own generator (temperature, then top-p), one-hot result."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device):
        import torch

        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= self.top_p  # mass before token already >= p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        picks = torch.stack([torch.multinomial(probs[row], 1, generator=gen)
                             for row, gen in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, picks, 0.0)


class TransformersEngine:
    """Generation with a transformers causal LM (+ optional peft LoRA adapter).

    Args:
        model: A local HF model folder (see ``resolve_model``) or a hub id.
        config: The engine settings (``EngineConfig``: dtype, max_model_len, batch_size, trust_remote_code).
        adapter: A peft adapter folder to serve from the start, or None.
        device: Where the model runs ("cuda:1", "cpu"); None: the first GPU when there is one, else the CPU.
    """

    name = "transformers"

    def __init__(self, model: str, config, adapter: str | None = None, device: str | None = None):
        import torch

        start = time.perf_counter()
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = engine_dtype(config.dtype, self.device.type == "cuda")
        self.max_model_len = config.max_model_len
        self.batch_size = config.batch_size
        self.trust_remote_code = config.trust_remote_code
        self._tokenizer = load_chat_tokenizer(model, config.trust_remote_code)
        self._model_dir = model
        self._base = self._load_base(model)
        self._peft = None
        self._adapter: str | None = None
        self._asleep = False
        eos = self._base.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self._eos_ids = sorted(set(eos) | ({self._tokenizer.eos_token_id} - {None}))
        self._weights_id = weights_fingerprint(model, None)
        if adapter is not None:
            self.set_adapter(adapter)
        self.timings["start"].append(time.perf_counter() - start)

    # ----------------------------------------------------------------------------------------- properties
    def describe(self) -> str:
        """Where and how it serves, for the one start line."""
        import torch

        return f"transformers on {self.device}, {self.dtype}, batch {self.batch_size}, {torch.get_num_threads()} threads"

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def weights_id(self) -> str:
        return self._weights_id

    @property
    def model(self):
        """The module that generates (the peft wrapper while an adapter is served)."""
        return self._peft if self._peft is not None else self._base

    # ----------------------------------------------------------------------------------------- generation
    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig,
                 request_seeds: Sequence[int] | None = None, progress: str | None = None,
                 on_finished: Callable[[list[tuple[int, RequestOutput]]], None] | None = None) -> list[RequestOutput]:
        """Generate ``sampling.n`` completions per conversation; results in input order. ``on_finished`` (when
        given) receives, after each batch, the conversations whose completions are all done."""
        from tqdm.auto import tqdm

        if self._asleep:
            raise RuntimeError("transformers engine is asleep; call wake() before generate()")
        prompt_ids = encode_prompts(self._tokenizer, conversations, self.max_model_len)
        jobs = make_jobs(prompt_ids, sampling, request_seeds)
        order = sorted(range(len(jobs)), key=lambda k: len(jobs[k].prompt_ids))
        collector = OutputCollector(prompt_ids, sampling.n)
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc=progress, disable=progress is None, unit="batch"):
            chunk = order[start:start + self.batch_size]
            done = (collector.add(jobs[k], c) for k, c in zip(chunk, self._generate_batch([jobs[k] for k in chunk],
                                                                                          sampling)))
            finished = [item for item in done if item is not None]
            if finished and on_finished is not None:
                on_finished(finished)
        return collector.outputs

    def _generate_batch(self, batch: list[Job], sampling: SamplingConfig) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        pad_id = self._tokenizer.pad_token_id
        width = max(len(job.prompt_ids) for job in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, job in enumerate(batch):  # left padding
            input_ids[row, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids)
            attention[row, width - len(job.prompt_ids):] = 1
        config = GenerationConfig(max_new_tokens=min(sampling.max_tokens, self.max_model_len - width),
                                  do_sample=False, num_beams=1, repetition_penalty=1.0,
                                  eos_token_id=self._eos_ids, pad_token_id=pad_id,
                                  stop_strings=list(sampling.stop) or None)
        processors = LogitsProcessorList()
        if not sampling.greedy:
            processors.append(_SeededRowSampler([job.seed for job in batch], sampling.temperature,
                                                sampling.top_p, self.device))
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                      generation_config=config, logits_processor=processors,
                                      tokenizer=self._tokenizer if sampling.stop else None)
        return [self._completion(row.tolist(), sampling.stop) for row in out[:, width:].cpu()]

    def _completion(self, tokens: list[int], stop: Sequence[str]) -> Completion:
        eos = set(self._eos_ids)
        eos_at = next((pos for pos, tok in enumerate(tokens) if tok in eos), None)
        body = tokens if eos_at is None else tokens[:eos_at]
        text, hit = cut_at_stop(self._tokenizer.decode(body, skip_special_tokens=True), stop)
        if hit:
            return Completion(text=text, num_tokens=len(body), finish_reason="stop")
        if eos_at is not None:
            return Completion(text=text, num_tokens=eos_at + 1, finish_reason="stop")
        return Completion(text=text, num_tokens=len(body), finish_reason="length")

    # ----------------------------------------------------------------------------------------- weights
    def set_adapter(self, adapter_dir: str | None) -> None:
        """Serve a peft LoRA adapter (None: the bare weights); the base model is never reloaded."""
        from peft import PeftModel

        start = time.perf_counter()
        if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter folder {adapter_dir!r} has no adapter_config.json; pass a peft "
                                    "save_pretrained folder or None")
        if self._peft is not None:
            self._base = self._peft.unload()  # removes the LoRA layers without merging them
            self._peft = None
        if adapter_dir is not None:
            self._peft = PeftModel.from_pretrained(self._base, adapter_dir, is_trainable=False).eval()
        self._adapter = adapter_dir
        self._weights_id = weights_fingerprint(self._model_dir, adapter_dir)
        self.timings["set_adapter"].append(time.perf_counter() - start)

    def load_weights(self, model_dir: str, weights_id: str | None = None) -> None:
        """Copy the full weights of a same-architecture HF folder (safetensors) into the served model.
        ``weights_id``: the fingerprint to serve them under (a merged adapter keeps its adapter's); None: the
        folder's."""
        from safetensors.torch import load_file

        start = time.perf_counter()
        files = sorted(Path(model_dir).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {model_dir!r}; save the model with "
                                    "save_pretrained(safe_serialization=True)")
        adapter = self._adapter
        if self._peft is not None:
            self._base = self._peft.unload()
            self._peft = None
        state = {}
        for path in files:
            state.update(load_file(str(path)))
        current = self._base.state_dict(keep_vars=True)
        unexpected = sorted(set(state) - set(current))
        loaded_ptrs = {current[key].data_ptr() for key in state if key in current}
        missing = sorted(key for key in set(current) - set(state) if current[key].data_ptr() not in loaded_ptrs)
        if unexpected or missing:
            raise ValueError(f"weights in {model_dir!r} do not match the served architecture "
                             f"(unexpected: {unexpected[:3]}, missing: {missing[:3]}); use a folder saved from "
                             "the same model")
        self._base.load_state_dict(state, strict=False)
        self._model_dir = model_dir
        self._weights_id = weights_id or weights_fingerprint(model_dir, None)
        if adapter is not None:
            self.set_adapter(adapter)
        self.timings["load_weights"].append(time.perf_counter() - start)

    def _load_base(self, model: str):
        import torch
        from transformers import AutoModelForCausalLM

        from regenesis_pl.model_source import hub_load_error

        try:
            base = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, self.dtype),
                                                        trust_remote_code=self.trust_remote_code)
        except OSError as err:
            if Path(model).is_dir():
                raise
            raise hub_load_error(model, err) from err
        return base.to(self.device).eval()

    # ----------------------------------------------------------------------------------------- lifecycle
    def sleep(self) -> None:
        """On CUDA, park the weights in CPU memory to free the GPU for training; no-op on CPU."""
        import torch

        if self.device.type == "cuda" and not self._asleep:
            self.model.to("cpu")
            torch.cuda.empty_cache()
            self._asleep = True

    def wake(self) -> None:
        """Undo ``sleep``."""
        start = time.perf_counter()
        if self._asleep:
            self.model.to(self.device)
            self._asleep = False
        self.timings["wake"].append(time.perf_counter() - start)

    def close(self) -> None:
        """Drop the model and free its memory."""
        import torch

        self._peft = None
        self._base = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
