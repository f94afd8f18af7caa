"""Guidelines, prompt builders, selection/judge parsing and seeds of the method package."""

from __future__ import annotations

import json

import pytest

from regenesis_pl.chat import ANSWER_FORMAT, format_question
from regenesis_pl.hashing import stable_rng, stable_seed
from regenesis_pl.method.guidelines import Guideline, load_guidelines
from regenesis_pl.method.prompts import (
    adapt_prompt,
    hint_answer,
    judge_prompt,
    parse_judgement,
    parse_selection,
    path_prompt,
    selection_prompt,
    structure_prompt,
)
from regenesis_pl.tasks.types import AnswerType, Question

MC = Question(id="m1", task="toy_mc", text="Which animal can fly?", answer_type=AnswerType.MULTIPLE_CHOICE,
              answer="B", choices=("a cow", "a sparrow", "a fish"))
NUM = Question(id="n1", task="toy_add", text="What is 17 + 26?", answer_type=AnswerType.NUMERIC, answer="43")


def test_packaged_guidelines_are_the_25_in_order():
    gl = load_guidelines()
    assert len(gl) == 25
    assert len({g.id for g in gl}) == 25
    assert gl[0].id == "g01-experiment" and gl[4].id == "g05-decompose" and gl[-1].id == "g25-modify-solution"
    assert all(g.text and g.text == " ".join(g.text.split()) for g in gl)


def test_custom_guideline_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["Draw a picture.", "Check units."]))
    assert load_guidelines(str(tmp_path / "a.json")) == [Guideline("g01", "Draw a picture."),
                                                         Guideline("g02", "Check units.")]
    (tmp_path / "b.yaml").write_text("- id: pic\n  text: Draw  a picture.\n")
    assert load_guidelines(str(tmp_path / "b.yaml")) == [Guideline("pic", "Draw a picture.")]


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("[]", "empty"),
    ("{not json", "cannot be parsed"),
    ('{"id": "x"}', "expected a list"),
    ('[{"id": "x"}]', "entry 0"),
    ('[{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]', "duplicate ids"),
    ('["  "]', "blank"),
])
def test_bad_guideline_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "g.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_guidelines(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_guideline_file():
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_guidelines("/nonexistent/nope.json")


def test_stage_prompts_show_question_and_inputs_without_hint():
    g = load_guidelines()[4]
    adapt = adapt_prompt(MC, [g])[0]["content"]
    assert g.text in adapt and format_question(MC) in adapt and "Do not solve" in adapt
    assert "(B) a sparrow" in adapt and "correct final answer" not in adapt
    structure = structure_prompt(MC, "Compare which animals have wings.")[0]["content"]
    assert "Compare which animals have wings." in structure and "Do not solve" in structure
    path = path_prompt(NUM, "1. Add the tens. 2. Add the ones.")[0]["content"]
    assert "1. Add the tens." in path and path.endswith(ANSWER_FORMAT[AnswerType.NUMERIC])
    assert "43" not in path


def test_hint_prompts_carry_the_gold_answer():
    g = load_guidelines()[0]
    assert hint_answer(MC) == "(B) a sparrow" and hint_answer(NUM) == "43"
    assert "(B) a sparrow" in adapt_prompt(MC, [g], hint=True)[0]["content"]
    assert "43" in structure_prompt(NUM, "plan", hint=True)[0]["content"].replace("17 + 26", "")
    assert "43" in path_prompt(NUM, "plan", hint=True)[0]["content"].replace("17 + 26", "")
    no_gold = Question(id="x", task="t", text="?", answer_type=AnswerType.NUMERIC)
    with pytest.raises(ValueError, match="no gold answer"):
        adapt_prompt(no_gold, [g], hint=True)


def test_selection_prompt_numbers_every_guideline():
    gl = load_guidelines()
    text = selection_prompt(NUM, gl)[0]["content"]
    assert f"1. {gl[0].text}" in text and f"25. {gl[24].text}" in text and "17 + 26" in text
    assert len(adapt_prompt(NUM, gl[:3])[0]["content"].split("\n- ")) == 4  # three bulleted strategies


@pytest.mark.parametrize("reply, expected", [
    ("5, 21, 22", [4, 20, 21]),
    ("Strategies 3 and 3 and 10.", [2, 9]),
    ("I pick 1, 2, 3, 4", [0, 1, 2]),
    ("26, 0, 7", [6]),
    ("1.5 and 2", [1]),
    ("none of them", []),
])
def test_parse_selection(reply, expected):
    assert parse_selection(reply, 25) == expected


@pytest.mark.parametrize("reply, expected", [
    ("Yes.", True), ("no, it does not", False), ("The answer: YES", True), ("maybe", None), ("Nope", None),
])
def test_parse_judgement(reply, expected):
    assert parse_judgement(reply) is expected


def test_judge_prompt_shows_reference_and_path():
    text = judge_prompt(MC, "Sparrows have wings. \\boxed{B}")[0]["content"]
    assert "Reference answer: (B) a sparrow" in text and "\\boxed{B}" in text


def test_stable_seed_depends_on_keys_only():
    assert stable_seed(0, 1, "path", "q1") == stable_seed(0, 1, "path", "q1")
    assert stable_seed(0, 1, "path", "q1") != stable_seed(0, 1, "path", "q2")
    assert 0 <= stable_seed("x") < 2**31
    assert stable_rng(3, "k").random() == stable_rng(3, "k").random()
