"""Reading typed answer values out of short spans of text: numbers, option letters, yes/no.

The helpers here work on a span that is already known to hold an answer (the inside of a ``\\boxed{}``,
the words after "the answer is", a gold answer from a dataset). ``grading.py`` decides which span of a
model's text to look at; loaders use the same helpers to store gold answers in one canonical form.

Every regular expression here is linear in the length of its input (no nested quantifiers), so the
helpers stay fast on arbitrary model output.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext
from fractions import Fraction

# A number as people and models write it: "1,234", "3.5", ".5", "-12"; digits in groups of three when
# commas are used, so "12,34" is two numbers.
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
NUMBER_RE = re.compile(
    r"(?<![\w./])(?P<sign>[-\u2212+])?\$?\s?(?P<num>" + _DIGITS + r")"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?))?(?!\d)"
)
_PLAIN_NUMBER_RE = re.compile(
    r"\$?(?P<sign>[-\u2212+])?\$?(?P<num>" + _DIGITS + r")(?:/(?P<den>\d+(?:\.\d+)?))?%?"
)
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([-\d.,]+)\s*\}\s*\{\s*([-\d.,]+)\s*\}")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox)\s*\{([^{}]*)\}")
_LATEX_SPACE_RE = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_YES_NO_RE = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_YES_NO = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
_SPACE_RE = re.compile(r"\s+")


def clean_latex(text: str) -> str:
    """Rewrite the LaTeX bits that hide plain values: ``\\frac{3}{4}`` -> ``3/4``, ``\\text{B}`` -> ``B``,
    ``\\$`` -> ``$``, ``\\%`` -> ``%``, ``{,}`` -> ``,``, LaTeX spacing removed."""
    text = text.replace("\\$", "$").replace("\\%", "%").replace("{,}", ",").replace("\\left", "")
    text = text.replace("\\right", "").replace("\\cdot", "*").replace("\\times", "*")
    text = _FRAC_RE.sub(r"\1/\2", text)
    text = _TEXT_RE.sub(r"\1", text)
    text = _LATEX_SPACE_RE.sub(" ", text)
    # A thin space between digit groups ("1\,234" became "1 234") is a thousands separator.
    return re.sub(r"(?<=\d) (?=\d{3}(?!\d))", "", text)


def _to_fraction(sign: str | None, num: str, den: str | None) -> Fraction | None:
    value = Fraction(num.replace(",", ""))
    if den is not None:
        denominator = Fraction(den)
        if denominator == 0:
            return None
        value /= denominator
    return -value if sign in ("-", "\u2212") else value


def parse_number(text: str) -> Fraction | None:
    """The exact value of a span that is just a number (``"$1,234.50"``, ``"-3/4"``, ``"50%"``, ``".5"``,
    ``"\\frac{1}{2}"``), or None when the span is anything else."""
    span = clean_latex(text).strip().strip("$").strip()
    span = span.rstrip(".").replace(" ", "")
    if len(span) > 64:
        return None
    m = _PLAIN_NUMBER_RE.fullmatch(span)
    return _to_fraction(m["sign"], m["num"], m["den"]) if m else None


def format_number(value: Fraction) -> str:
    """Canonical text of a number: ``3.5``, ``1000``, ``-0.25``; ``p/q`` when the decimal never ends."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d != 1:
        return f"{value.numerator}/{value.denominator}"
    with localcontext() as ctx:
        ctx.prec = max(28, len(str(value.numerator)) + len(str(value.denominator)) + 2)
        text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def number_text(match: re.Match) -> str:
    """The number a ``NUMBER_RE`` match stands for, as plain text without commas ("-1234", "3/4", "0.5")."""
    sign = "-" if match["sign"] in ("-", "\u2212") else ""
    num = match["num"].replace(",", "")
    num = "0" + num if num.startswith(".") else num
    return f"{sign}{num}/{match['den']}" if match["den"] else f"{sign}{num}"


def first_number(span: str) -> str | None:
    """The first number in a span, after the last "=" when there is one ("2 * 9 = 18" -> "18")."""
    span = clean_latex(span)
    if "=" in span:
        span = span.rsplit("=", 1)[1]
    m = NUMBER_RE.search(span)
    return number_text(m) if m else None


def last_number(text: str) -> str | None:
    """The last number anywhere in a text, or None."""
    last = None
    for last in NUMBER_RE.finditer(clean_latex(text)):
        pass
    return number_text(last) if last else None


def yes_no_in(span: str, last: bool = False) -> str | None:
    """"yes" or "no" for the first (or last) yes/no/true/false word in a span, else None."""
    found = None
    for m in _YES_NO_RE.finditer(span):
        found = m
        if not last:
            break
    return _YES_NO[found.group(1).lower()] if found else None


def normalize_text(text: str) -> str:
    """Lowercase, single spaces, no surrounding quotes/punctuation: for comparing free-text answers."""
    text = clean_latex(text).replace("$", "").replace("*", "")
    return _SPACE_RE.sub(" ", text).strip().strip(".,;:!?\"'`()[]{} ").lower()


# --- multiple choice --------------------------------------------------------------------------------

_ONLY_LETTER_RE = re.compile(r"\(?\s*([A-Za-z])\s*\)?[.:]?")
_LEADING_LETTER_RE = re.compile(r"\(?([A-Z])[).:]\s")
_MARKED_LETTER_RE = re.compile(r"\(([A-Z])\)|\b(?i:option|choice|letter)\s*(?::\s*)?\(?([A-Za-z])\b")
# An option named by its place: "the second option", "the 3rd choice", "option two", "choice number 4".
_ORDINALS = {"first": 0, "1st": 0, "second": 1, "2nd": 1, "third": 2, "3rd": 2, "fourth": 3, "4th": 3,
             "fifth": 4, "5th": 4, "one": 0, "two": 1, "three": 2, "four": 3, "five": 4,
             "1": 0, "2": 1, "3": 2, "4": 3, "5": 4}
ORDINAL_OPTION_RE = re.compile(
    r"\b(first|second|third|fourth|fifth|1st|2nd|3rd|4th|5th)\s+(?:option|choice|answer(?:\s+choice)?)\b"
    r"|\b(?:option|choice)\s+(?:number\s+|no\.?\s*|#\s*)?(one|two|three|four|five|[1-5])\b",
    re.IGNORECASE)


def ordinal_letter(match: re.Match, letters: str) -> str | None:
    """The letter of an option an ``ORDINAL_OPTION_RE`` match names by its place, or None past the last one."""
    index = _ORDINALS[(match.group(1) or match.group(2)).lower()]
    return letters[index] if index < len(letters) else None


def choice_pattern(choice: str) -> re.Pattern | None:
    """A case-insensitive, word-bounded pattern for an option text, or None for an empty option."""
    choice = normalize_text(choice)
    if not choice:
        return None
    return re.compile(r"(?<!\w)" + re.escape(choice) + r"(?!\w)", re.IGNORECASE)


def _choice_in(span: str, choices: tuple[str, ...], letters: str) -> str | None:
    norm = normalize_text(span)
    if not norm:
        return None
    for letter, choice in zip(letters, choices):
        if normalize_text(choice) == norm:
            return letter
    contained = []
    for letter, choice in zip(letters, choices):
        pattern = choice_pattern(choice)
        if pattern is not None and pattern.search(norm):
            contained.append((letter, normalize_text(choice)))
    # Drop options whose text is part of another contained option ("fish" inside "long sea fish").
    distinct = [(ltr, c) for ltr, c in contained if not any(c != o and c in o for _, o in contained)]
    return distinct[0][0] if len(distinct) == 1 else None


def letter_in(span: str, choices: tuple[str, ...], letters: str) -> str | None:
    """The option letter a short answer span names: "B", "(b)", "B) 270", "option B", "the second option",
    "choice 3", or an option's text.

    Returns None when the span names no option, or names more than one.
    """
    span = clean_latex(span).replace("$", "").replace("*", "").strip()
    if len(span) > 1000:
        span = span[:1000]
    m = _ONLY_LETTER_RE.fullmatch(span)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    m = _LEADING_LETTER_RE.match(span + " ")
    if m and m.group(1) in letters:
        return m.group(1)
    marked = {(a or b).upper() for a, b in _MARKED_LETTER_RE.findall(span)} & set(letters)
    marked |= {ordinal_letter(m, letters) for m in ORDINAL_OPTION_RE.finditer(span)} - {None}
    if len(marked) == 1:
        return marked.pop()
    if marked:
        return None
    return _choice_in(span, choices, letters)
