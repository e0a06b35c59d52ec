"""model stage: the model families and their configs."""

from lmforge.model.gpt import GPT, GPTConfig
from lmforge.model.layers import KVCache

__all__ = ["GPT", "GPTConfig", "KVCache"]
