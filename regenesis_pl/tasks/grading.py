"""Grading a model's text against a question: extract the final answer, normalize it, compare with gold.

Extraction (``extract_answer``), as a careful reader takes the final answer:

1. the answer stated last, whichever form it takes: the last non-empty ``\\boxed{...}`` / ``\\fbox{...}``
   (nested braces allowed; an unclosed box at the end of a cut-off generation counts up to the end of its
   line), the last "the answer is ...", "final answer: ...", "answer = ..." phrase whose words hold a value of
   the question's answer type, or a GSM8K-style "#### 18" line; a later one overrides an earlier one;
2. without a stated answer, by answer type, anywhere in the text: the last number (numeric); the last option
   marker ("(B)", "B)", "B.", "option B", "the second option", "choice 3", a lone "B") or option text (multiple
   choice), ignoring a listing of the options ("A. .. B. .. C. .."); the last yes/no/true/false word (yes/no).
   Free-text answers need a stated answer.

Markdown emphasis around a value ("**B**", "__18__") is read through. A stated answer that hedges between two
values ("B or C", "yes or no", "12 or 15") is returned as written and grades as wrong for either gold value
(``hedged``).

Comparison (``answers_match``): plain numbers compare as exact rationals (integers exactly, others with
a relative tolerance of 1e-6); other numeric or free-text answers go through ``math_verify`` with its
signal-based timeouts switched off, so grading works in any thread, after a size guard that keeps
sympy away from inputs it can hang on (towers of powers, factorials, very long expressions).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from regenesis_pl.tasks.answers import (
    ORDINAL_OPTION_RE,
    choice_pattern,
    clean_latex,
    first_number,
    format_number,
    last_number,
    letter_in,
    normalize_text,
    ordinal_letter,
    parse_number,
    yes_no_in,
)
from regenesis_pl.tasks.types import AnswerType, Question

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b\s*")
_MAX_BOX = 1000          # longest box content looked at, in characters
_BRACE_RE = re.compile(r"[{}]")
_PHRASE_RE = re.compile(
    r"\b(?:final\s+answer|the\s+answer|answer)\b\**"
    r"(?:\s+(?:is|was|would\s+be|will\s+be|should\s+be)\b\s*:?|\s*[:=])\**[ \t]*\n?[ \t]*"
    r"(?P<span>[^\n]{0,200})",
    re.IGNORECASE,
)
_HASHES_RE = re.compile(r"(?m)^[ \t]*####[ \t]*(?P<span>[^\n]{0,200})")  # GSM8K's "#### 18" answer line
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)")
# Markdown emphasis around a value ("**B**", "__18__"); not "2**3", a power.
_EMPHASIS_RE = re.compile(r"(?<![\w*])(\*\*|__)(?=\S)([^\n]{1,200}?)(?<=\S)\1(?![\w*])")
_OR_RE = re.compile(r"\b(?:and/or|or)\b|(?<=[A-Z)])\s*/\s*(?=\(?[A-Z]\b)", re.IGNORECASE)
_LINE_LETTER_RE = re.compile(r"(?m)^[ \t>*#-]*\(?([A-Z])[).:](?=\s)")
_MARKED_RE = re.compile(r"\(([A-Z])\)|(?i:answer)\s*(?:is\b\s*)?(?::\s*)?\(?([A-Z])\b")
_NAMED_RE = re.compile(r"\b(?:option|choice)\s*(?::\s*)?\(?([A-Za-z])\b", re.IGNORECASE)
_LONE_LETTER_RE = re.compile(r"(?<![\w'])([A-Z])(?![\w'])(?=\s*(?:[.,;:!?)\]*]|$))")
_POW_RE = re.compile(r"\^|\*\*")
_SMALL_POW_RE = re.compile(r"(?:\^|\*\*)\s*(?:\{\s*-?\d{1,2}\s*\}|-?\d{1,2}(?!\d))")
_MV_MAX_CHARS = 200
_EXPRESSION_RE = re.compile(r"\^|\\(?:sqrt|pi|frac|dfrac|log|ln|sin|cos)|\d\s*[-+*]\s*[\d(]|\)\s*[-+*/]")
_WORD_RE = re.compile(r"(?<!\\)\b[a-zA-Z]{3,}\b")


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one text.

    Attributes:
        answer: The extracted final answer, or None.
        parsed: Whether a final answer could be extracted.
        correct: Whether it matches the gold answer; None when the question has no gold answer.
    """

    answer: str | None
    parsed: bool
    correct: bool | None


# --- extraction -------------------------------------------------------------------------------------

def _box_content(text: str, start: int) -> str:
    """The content of a box whose name ends at ``start`` (nested braces handled, length capped)."""
    if start >= len(text) or text[start] != "{":  # "\boxed 5"
        rest = text[start:start + 64].split(maxsplit=1)
        return rest[0] if rest else ""
    end, depth = min(len(text), start + _MAX_BOX), 0
    for m in _BRACE_RE.finditer(text, start, end):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[start + 1:m.start()]
    return text[start + 1:end].split("\n", 1)[0]  # unclosed: a generation cut off inside the box


def _last_box(text: str) -> str | None:
    """Content of the last non-empty ``\\boxed``/``\\fbox``, or None."""
    for m in reversed(list(_BOX_RE.finditer(text))):
        content = _box_content(text, m.end())
        if content.strip():
            return content
    return None


def hedged(span: str, question: Question) -> bool:
    """Whether a stated answer names two different values of its type joined by "or" ("B or C", "(A)/(D)",
    "yes or no", "12 or 15", "wet palms or dry palms"): a hedge is wrong whichever value is gold."""
    if question.answer_type is AnswerType.FREE_TEXT or len(span) > 400 or not _OR_RE.search(span):
        return False
    kind = question.answer_type
    values = set()
    for part in _OR_RE.split(span):
        if kind is AnswerType.NUMERIC:
            number = first_number(part)
            value = parse_number(number) if number is not None else None
        elif kind is AnswerType.MULTIPLE_CHOICE:
            value = letter_in(part.strip(" ,;:.()?!"), question.choices, question.letters)
        else:
            value = yes_no_in(part)
        if value is not None:
            values.add(value)
    return len(values) > 1


def _typed_value(span: str, question: Question) -> str | None:
    """The answer a short span gives, in the question's answer type, or None. A hedge between two values
    is returned as written: it grades as wrong, not as unparsed."""
    if hedged(span, question):
        return span.strip().strip(".").strip()
    kind = question.answer_type
    if kind is AnswerType.NUMERIC:
        return first_number(span)
    if kind is AnswerType.MULTIPLE_CHOICE:
        return letter_in(span, question.choices, question.letters)
    if kind is AnswerType.YES_NO:
        return yes_no_in(span)
    text = normalize_text(span)
    return span.strip().strip(".").strip() if text else None


def _numeric_box(span: str) -> str | None:
    """A box's number, or its whole expression when it is math rather than a number with words
    ("2^{3}", "\\sqrt{2}", "3 + 4"): math_verify then judges the expression."""
    expr = clean_latex(span).replace("$", "").strip()
    if "=" in expr:
        expr = expr.rsplit("=", 1)[1].strip()
    if parse_number(expr) is None and _EXPRESSION_RE.search(expr) and not _WORD_RE.search(expr):
        return expr
    return first_number(span)


def _raw_box(span: str) -> str | None:
    raw = clean_latex(span).replace("$", "").strip()
    return raw or None


def _split_listings(text: str, markers: list[tuple[int, int, str]]):
    """Split letter markers into answers and listings of the options (three or more consecutive letters
    in alphabetical order, e.g. the model restating "A. .. B. .. C. .."); returns (kept, listing spans)."""
    keep, spans, i = [], [], 0
    while i < len(markers):
        j = i
        while j + 1 < len(markers) and ord(markers[j + 1][2]) == ord(markers[j][2]) + 1:
            j += 1
        if j - i + 1 >= 3:
            line_end = text.find("\n", markers[j][0])
            spans.append((markers[i][0] - markers[i][1], len(text) if line_end < 0 else line_end))
        else:
            keep.extend(markers[i:j + 1])
        i = j + 1
    return keep, spans


def _last_choice(text: str, question: Question) -> str | None:
    letters = set(question.letters)
    by_pos = {}
    for regex in (_LINE_LETTER_RE, _MARKED_RE, _NAMED_RE, _LONE_LETTER_RE):
        for m in regex.finditer(text):
            group = next(i for i, g in enumerate(m.groups(), 1) if g)
            letter = m.group(group).upper()
            if letter in letters:  # one marker per letter position, whichever pattern saw it
                by_pos.setdefault(m.start(group), (m.end(), m.end() - m.start(), letter))
    for m in ORDINAL_OPTION_RE.finditer(text):  # "the second option", "choice 3"
        letter = ordinal_letter(m, question.letters)
        if letter is not None:
            by_pos.setdefault(m.start(), (m.end(), m.end() - m.start(), letter))
    cands, listings = _split_listings(text, sorted(by_pos.values()))
    for letter, choice in zip(question.letters, question.choices):
        pattern = choice_pattern(choice)
        if pattern is None:
            continue
        last = None
        for m in pattern.finditer(text):
            if not any(a <= m.start() and m.end() <= b for a, b in listings):
                last = m
        if last is not None:
            cands.append((last.end(), last.end() - last.start(), letter))
    return max(cands)[2] if cands else None


def _overlapping(regex: re.Pattern, text: str) -> list[re.Match]:
    """Every match of a phrase pattern, each searched from where the previous one's span began, so a phrase
    inside another one's span ("Answer: no. ... so the answer is yes.") is found too."""
    found, pos = [], 0
    while (m := regex.search(text, pos)) is not None:
        found.append(m)
        pos = max(m.start("span"), m.start() + 1)
    return found


def _last_stated(text: str, question: Question) -> str | None:
    """The answer stated last: a box, an "answer is ..." phrase or a "####" line, whichever comes last in the
    text (a later restatement overrides an earlier one), or None when the text states none."""
    found = []  # (position, value)
    for m in reversed(list(_BOX_RE.finditer(text))):
        box = _box_content(text, m.end())
        if box.strip():
            if hedged(box, question):
                value = _raw_box(box)
            elif question.answer_type is AnswerType.NUMERIC:
                value = _numeric_box(box) or _raw_box(box)
            else:
                value = _typed_value(box, question) or _raw_box(box)
            found.append((m.start(), value))
            break
    for regex in (_PHRASE_RE, _HASHES_RE):
        for m in reversed(_overlapping(regex, text)):
            span = m.group("span")
            cut = _SENTENCE_END_RE.search(span)
            value = _typed_value(span[:cut.start()] if cut else span, question)
            if value is not None:
                found.append((m.start(), value))
                break
    return max(found)[1] if found else None


def extract_answer(text: str, question: Question) -> str | None:
    """The final answer stated in a model's text, or None when there is none.

    Args:
        text: The model's full response.
        question: The question it answers (its answer type and options guide the extraction).

    Returns:
        Numeric: the number as plain text ("-1234", "0.5", "3/4"); multiple choice: the option letter;
        yes/no: "yes" or "no"; free text: the boxed or stated answer. A box whose content holds no value
        of the expected type is returned as written (it then grades as wrong, not as unparsed).
    """
    if not isinstance(text, str) or not text:
        return None
    text = _EMPHASIS_RE.sub(r"\2", text)
    stated = _last_stated(text, question)
    if stated is not None:
        return stated
    last_line = text.rstrip().rsplit("\n", 1)[-1]
    if hedged(last_line, question):  # a closing "B or C?" with no stated answer: a hedge, not the last letter
        return last_line.strip()
    kind = question.answer_type
    if kind is AnswerType.NUMERIC:
        return last_number(text)
    if kind is AnswerType.MULTIPLE_CHOICE:
        return _last_choice(text, question)
    if kind is AnswerType.YES_NO:
        return yes_no_in(text, last=True)
    return None


# --- normalization and comparison -------------------------------------------------------------------

def canonical_answer(answer: str, question: Question) -> str:
    """A normal form of an answer, so equal answers compare equal (majority vote counts these).

    Numbers become exact canonical decimals ("3.50" -> "3.5", "1,000" -> "1000", "1/2" -> "0.5",
    "1/3" stays "1/3"); option texts map to their uppercase letter; yes/true -> "yes", no/false -> "no";
    anything else is lowercased with spaces and surrounding punctuation normalized.
    """
    kind = question.answer_type
    if kind is AnswerType.NUMERIC:
        value = parse_number(answer)
        return format_number(value) if value is not None else normalize_text(answer)
    if kind is AnswerType.MULTIPLE_CHOICE:
        return letter_in(answer, question.choices, question.letters) or normalize_text(answer)
    if kind is AnswerType.YES_NO:
        return yes_no_in(answer) or normalize_text(answer)
    return normalize_text(answer)


def _numbers_close(a: Fraction, b: Fraction) -> bool:
    if a.denominator == 1 and b.denominator == 1:
        return a == b
    return a == b or math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)


def _safe_for_sympy(expr: str) -> bool:
    """Whether an expression is small enough to hand to sympy without a timeout."""
    if len(expr) > _MV_MAX_CHARS or "!" in expr or "\\Gamma" in expr:
        return False
    # At most one power, and only a small integer one: towers like 9^{9^{9}} hang sympy.
    powers = len(_POW_RE.findall(expr))
    return powers == 0 or (powers == 1 and _SMALL_POW_RE.search(expr) is not None)


def _math_verify(predicted: str, gold: str) -> bool:
    """math_verify's equivalence check, without signal timeouts (thread safe), on guarded inputs."""
    if not (_safe_for_sympy(predicted) and _safe_for_sympy(gold)):
        return False
    from math_verify import parse, verify

    def as_latex(s: str) -> str:
        return s if "$" in s else f"${s}$"

    gold_parsed = parse(as_latex(gold), parsing_timeout=None)
    pred_parsed = parse(as_latex(predicted), parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def answers_match(predicted: str, gold: str, question: Question) -> bool:
    """Whether an extracted answer equals the gold answer, by the question's answer type.

    Numeric: exact rational comparison of plain numbers (tolerance 1e-6 relative for non-integers),
    else math_verify. Multiple choice: the predicted answer names the gold option (its letter or its
    text) and no other option; an option whose text repeats the gold option's text counts as the gold. Yes/no: yes/true against no/false. Free text: normalized text equality,
    else math_verify.
    """
    if predicted is None or gold is None or hedged(predicted, question):
        return False
    kind = question.answer_type
    if kind is AnswerType.NUMERIC:
        a, b = parse_number(predicted), parse_number(gold)
        if a is not None and b is not None:
            return _numbers_close(a, b)
        if not predicted.strip():
            return False
        return _math_verify(predicted, gold)
    if kind is AnswerType.MULTIPLE_CHOICE:
        pred, ref = canonical_answer(predicted, question), canonical_answer(gold, question)
        letters = question.letters
        if ref not in letters or pred not in letters:
            return False
        # Some datasets repeat an option's text (CommonsenseQA): identical options are the same answer.
        same_text = normalize_text(question.choices[letters.index(pred)]) == normalize_text(
            question.choices[letters.index(ref)])
        return pred == ref or same_text
    if kind is AnswerType.YES_NO:
        pred, ref = canonical_answer(predicted, question), canonical_answer(gold, question)
        return ref in ("yes", "no") and pred == ref
    if normalize_text(predicted) == normalize_text(gold):
        return True
    return _math_verify(predicted, gold)


def grade(text: str, question: Question) -> Grade:
    """Extract the final answer from ``text`` and compare it with the question's gold answer."""
    answer = extract_answer(text, question)
    if question.answer is None:
        return Grade(answer=answer, parsed=answer is not None, correct=None)
    correct = answer is not None and answers_match(answer, question.answer, question)
    return Grade(answer=answer, parsed=answer is not None, correct=correct)
