"""The one prompt builder: how a question becomes a chat turn, and how a chat becomes model text.

Synthesis (the final SFT record), training and evaluation all call these functions, so the model is
trained on exactly the prompt it is evaluated with (the released ReGenesis scripts mixed a "math problem"
training prompt and an extra system prompt at generation; we avoid both mismatches).
"""

from __future__ import annotations

from regenesis_pl.engines.base import Conversation
from regenesis_pl.tasks.types import AnswerType, Question

ANSWER_FORMAT = {
    # No concrete example value: a small model copies it ("\\boxed{42}" became its most common answer).
    AnswerType.NUMERIC: "End with the final answer as a number inside \\boxed{}.",
    AnswerType.MULTIPLE_CHOICE: "End with the letter of the correct option inside \\boxed{}.",
    AnswerType.YES_NO: "End with the final answer, yes or no, inside \\boxed{}.",
    AnswerType.FREE_TEXT: "End with the final answer in \\boxed{}.",
}

INSTRUCTION = "Solve the following problem. Think step by step."


def format_question(question: Question) -> str:
    """The question text with its options (for multiple choice), without any instruction."""
    if not question.choices:
        return question.text.strip()
    options = "\n".join(f"({letter}) {choice}" for letter, choice in zip(question.letters, question.choices))
    return f"{question.text.strip()}\nOptions:\n{options}"


def user_prompt(question: Question) -> str:
    """The user turn for a question: instruction, question (with options), answer format."""
    return f"{INSTRUCTION}\n\n{format_question(question)}\n\n{ANSWER_FORMAT[question.answer_type]}"


def question_messages(question: Question) -> Conversation:
    """The chat for evaluating a question (and the prompt side of an SFT record)."""
    return [{"role": "user", "content": user_prompt(question)}]


def sft_messages(question: Question, response: str) -> Conversation:
    """A training record: the evaluation prompt as the user turn, a reasoning path as the assistant turn."""
    return [*question_messages(question), {"role": "assistant", "content": response}]


def render_prompt(tokenizer, conversation: Conversation, add_generation_prompt: bool = True) -> str:
    """Apply the tokenizer's chat template; the only place chat templating happens.

    Raises a one-line ValueError when the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "?")
        raise ValueError(f"tokenizer of {name!r} has no chat template; use an instruct/chat model "
                         "or set tokenizer.chat_template")
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
