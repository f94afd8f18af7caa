"""regenesis_pl: teach a language model to reason by synthesizing and filtering its own reasoning paths."""

__version__ = "0.1.0"
