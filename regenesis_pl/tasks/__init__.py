"""Tasks: loaders, answer types, grading."""

from regenesis_pl.tasks.types import AnswerType, Question

__all__ = ["AnswerType", "Question"]
