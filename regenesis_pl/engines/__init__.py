"""Generation engines. Backends import vllm/transformers lazily, so this package imports without them."""

from regenesis_pl.engines.base import Completion, Conversation, Engine, Message, RequestOutput, SamplingConfig
from regenesis_pl.engines.factory import EngineConfig, build_engine

__all__ = ["Completion", "Conversation", "Engine", "EngineConfig", "Message", "RequestOutput", "SamplingConfig",
           "build_engine"]
