"""Generation engines. Backends import vllm/transformers lazily, so this package imports without them."""

from regenesis_pl.engines.base import Completion, Conversation, Engine, Message, RequestOutput, SamplingConfig

__all__ = ["Completion", "Conversation", "Engine", "Message", "RequestOutput", "SamplingConfig"]
