"""Methods mixed into vLLM's worker processes (``worker_extension_cls``), called by name via ``collective_rpc``.

Calling by name needs no pickled callables, so vLLM's insecure serialization stays off. This module is
imported inside the worker processes only; it must not import vllm at module level (the package must
import without vllm).
"""

from __future__ import annotations


class WeightReloadExtension:
    """In-place full-weight reload for the running engine.

    vLLM's ``Worker.reload_weights`` reloads every layer found in the checkpoint. A tied LM head (e.g.
    SmolLM2, Llama 3.2 1B) is not in the checkpoint, so it is skipped; on CPU its matmul kernel holds a
    prepacked copy of the old embedding matrix and would keep computing logits with the old weights. After
    the reload we therefore re-run the LM head's (unquantized) post-load processing, which repacks it from the
    current, shared weight (a no-op on CUDA).
    """

    def regenesis_reload_weights(self, weights_path: str) -> int:
        """Reload weights from ``weights_path``; returns how many LM heads were refreshed."""
        import logging

        from vllm.model_executor.layers.vocab_parallel_embedding import (
            ParallelLMHead,
            UnquantizedEmbeddingMethod,
        )

        # vLLM warns for every layer the checkpoint has no tensor for; two are expected on every reload: the rotary
        # cache (computed, never saved) and a tied LM head (refreshed below). Other layers still warn.
        expected = ("RotaryEmbedding: Failed to load weights", "ParallelLMHead: Failed to load weights")
        quiet = DropMessages(expected)
        layerwise = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        layerwise.addFilter(quiet)
        try:
            self.reload_weights(weights_path=weights_path)
        finally:
            layerwise.removeFilter(quiet)
        refreshed = 0
        for module in self.model_runner.get_model().modules():
            method = getattr(module, "quant_method", None)
            if isinstance(module, ParallelLMHead) and isinstance(method, UnquantizedEmbeddingMethod):
                method.process_weights_after_loading(module)
                refreshed += 1
        return refreshed

    def regenesis_forget_reload_state(self) -> None:
        """Drop what vLLM's layer-wise reload keeps per layer for the next reload (module-level, keyed by the
        layer): after a reload it holds a copy of the weights that outlives the engine. Called when the engine
        closes; it matters where the model runs in the caller's process, which goes on after the engine."""
        from vllm.model_executor.model_loader.reload import layerwise

        for module in self.model_runner.get_model().modules():
            layerwise.LAYERWISE_INFO.pop(module, None)


class DropMessages:
    """A logging filter that drops records whose message starts with one of ``prefixes`` (vLLM notices that
    never apply to how this package drives the engine; the engine process and the workers share it)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes

    def filter(self, record) -> bool:
        return not record.getMessage().startswith(self.prefixes)
