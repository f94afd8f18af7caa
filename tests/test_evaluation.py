"""Zero-shot evaluation: scoring and reports with a scripted engine (fast), then `regenesis evaluate` on the real
embedded model with the transformers engine, including the rerun that reuses the generation store (slow)."""

from __future__ import annotations

import json

import pytest

from regenesis_pl.engines.base import Completion, RequestOutput
from regenesis_pl.evaluation import evaluate_questions, write_eval_report
from regenesis_pl.tasks.types import AnswerType, Question


class Replies:
    """An engine that answers each question with a fixed text (prompt plumbing only) and logs its calls."""

    name = "replies"
    tokenizer = None
    weights_id = "replies-0"

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies, self.calls = replies, []

    def generate(self, conversations, sampling, request_seeds=None, progress=None, on_finished=None):
        self.calls.append({"n": len(conversations), "sampling": sampling, "progress": progress,
                           "seeds": list(request_seeds)})
        outputs = []
        for conv in conversations:
            text = next(r for q, r in self.replies.items() if q in conv[-1]["content"])
            outputs.append(RequestOutput(completions=[Completion(text=text, num_tokens=len(text.split()),
                                                                 finish_reason="stop")],
                                         prompt_tokens=1))
        return outputs


def _questions():
    return [
        Question(id="a1", task="add", text="What is 2 + 3?", answer_type=AnswerType.NUMERIC, answer="5"),
        Question(id="a2", task="add", text="What is 4 + 4?", answer_type=AnswerType.NUMERIC, answer="8"),
        Question(id="a3", task="add", text="What is 1 + 1?", answer_type=AnswerType.NUMERIC, answer="2"),
        Question(id="y1", task="yn", text="Is ice cold?", answer_type=AnswerType.YES_NO, answer="yes"),
        Question(id="y2", task="yn", text="Is fire cold?", answer_type=AnswerType.YES_NO, answer="no"),
        Question(id="n1", task="yn", text="Is this unknowable?", answer_type=AnswerType.YES_NO, answer=None),
    ]


REPLIES = {"2 + 3": "2 + 3 = 5. \\boxed{5}", "4 + 4": "4 + 4 is \\boxed{9}", "1 + 1": "I cannot say.",
           "ice": "Ice is frozen water. \\boxed{yes}", "fire": "Fire is hot, so \\boxed{no}",
           "unknowable": "\\boxed{yes}"}


def test_scores_parse_rates_records_and_skips():
    engine = Replies(REPLIES)
    result = evaluate_questions(engine, _questions(), max_tokens=64, progress=None)
    assert len(engine.calls) == 1 and engine.calls[0]["n"] == 5  # one call; the question without gold skipped
    assert engine.calls[0]["sampling"].temperature == 0.0 and engine.calls[0]["sampling"].max_tokens == 64
    # per-question seeds, independent of the question's position (so a store finds its answers again)
    again = Replies(REPLIES)
    evaluate_questions(again, list(reversed(_questions())), progress=None)
    assert again.calls[0]["seeds"] == list(reversed(engine.calls[0]["seeds"]))
    assert len(set(engine.calls[0]["seeds"])) == 5
    add, yn = result.per_task["add"], result.per_task["yn"]
    assert (add.n, add.correct, add.parsed) == (3, 1, 2)
    assert add.accuracy == pytest.approx(1 / 3) and add.parse_rate == pytest.approx(2 / 3)
    assert add.mean_tokens == pytest.approx((6 + 5 + 3) / 3)
    assert (yn.n, yn.correct, yn.accuracy, yn.parse_rate) == (2, 2, 1.0, 1.0)
    assert result.mean_accuracy == pytest.approx((1 / 3 + 1.0) / 2)
    by_id = {r["question_id"]: r for r in result.records if "question_id" in r}
    assert by_id["a2"]["answer"] == "9" and not by_id["a2"]["correct"] and by_id["a2"]["parsed"]
    assert not by_id["a3"]["parsed"] and by_id["a3"]["answer"] is None
    assert result.records[-1] == {"skipped_without_gold": 1}


def test_no_gradable_question_is_an_error():
    only = [q for q in _questions() if q.answer is None]
    with pytest.raises(ValueError, match="none of the 1 questions has a gold answer"):
        evaluate_questions(Replies(REPLIES), only, progress=None)


def test_report_files(tmp_path):
    result = evaluate_questions(Replies(REPLIES), _questions(), progress=None)
    write_eval_report(result, str(tmp_path / "run"), title="Toy", meta={"engine": "replies"})
    data = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert data["per_task"]["add"]["correct"] == 1 and data["meta"] == {"engine": "replies"}
    lines = (tmp_path / "run" / "eval_records.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["question_id"] == "a1"
    md = (tmp_path / "run" / "eval.md").read_text()
    assert md.startswith("## Toy") and "| add | 3 | 33.3% | 66.7% | 5 |" in md and "| yn | 2 | 100.0% |" in md


@pytest.mark.slow
def test_evaluate_command_on_the_embedded_model_and_rerun_from_the_store(tmp_path, capsys):
    import torch

    from regenesis_pl.cli import main

    torch.set_num_threads(2)
    data = tmp_path / "toy_add.jsonl"
    data.write_text("".join(json.dumps(Question(id=f"q{i}", task="toy_add", text=f"What is {i + 2} + {i + 5}?",
                                                 answer_type=AnswerType.NUMERIC, answer=str(2 * i + 7)).to_dict())
                            + "\n" for i in range(6)))
    run = tmp_path / "run"

    def evaluate(limit: int):
        code = main(["evaluate", "--tasks", json.dumps([{"name": "toy_add", "path": str(data), "limit": limit}]),
                     "--engine.backend", "transformers", "--max_tokens", "48", "--flush_every", "2",
                     "--run_dir", str(run)])
        assert code == 0
        return json.loads((run / "eval.json").read_text()), (run / "eval_records.jsonl").read_text().splitlines()

    first, records4 = evaluate(4)
    score = first["per_task"]["toy_add"]
    rows = [json.loads(r) for r in records4]
    assert score["n"] == 4 == len(rows)
    assert score["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 4)
    assert score["parse_rate"] == pytest.approx(sum(r["parsed"] for r in rows) / 4)
    assert first["meta"]["store"] == {"hits": 0, "misses": 4} and first["meta"]["tokens_per_s"] > 0
    assert "| toy_add | 4 |" in capsys.readouterr().out
    # the same command again: every answer comes from the store, the scores and texts are the same
    again, records_again = evaluate(4)
    assert again["meta"]["store"] == {"hits": 4, "misses": 0}
    assert again["per_task"] == first["per_task"] and records_again == records4
    # a larger task list generates only the new questions (the store is keyed by content, not by the list)
    more, records6 = evaluate(6)
    assert more["meta"]["store"] == {"hits": 4, "misses": 2} and more["per_task"]["toy_add"]["n"] == 6
    texts4 = {json.loads(r)["question_id"]: json.loads(r)["text"] for r in records4}
    texts6 = {json.loads(r)["question_id"]: json.loads(r)["text"] for r in records6}
    assert all(texts6[q] == t for q, t in texts4.items())


@pytest.mark.slow
def test_evaluate_killed_mid_call_resumes_with_nothing_answered_twice(tmp_path):
    """SIGKILL `regenesis evaluate` once some answers are stored (one engine call, each answer stored as it
    finishes); the same command then answers only the rest and scores exactly like an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    data = tmp_path / "toy_add.jsonl"
    data.write_text("".join(json.dumps(Question(id=f"q{i}", task="toy_add", text=f"What is {i + 2} + {i + 5}?",
                                                 answer_type=AnswerType.NUMERIC, answer=str(2 * i + 7)).to_dict())
                            + "\n" for i in range(6)))

    def command(run: Path) -> list[str]:
        return [sys.executable, "-m", "regenesis_pl.cli", "evaluate", "--tasks",
                json.dumps([{"name": "toy_add", "path": str(data)}]), "--engine.backend", "transformers",
                "--engine.batch_size", "1", "--max_tokens", "48", "--run_dir", str(run)]

    def stored(run: Path) -> int:
        return sum(len(p.read_bytes().splitlines()) for p in run.glob("store-*/generations*.jsonl"))

    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    reference = tmp_path / "reference"
    subprocess.run(command(reference), env=env, check=True, capture_output=True, timeout=900)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while stored(killed) < 2:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "no stored answer after 600 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = stored(killed)
    assert proc.returncode == -signal.SIGKILL and 2 <= done < 6 and not (killed / "eval.json").exists()
    subprocess.run(command(killed), env=env, check=True, capture_output=True, timeout=900)
    resumed = json.loads((killed / "eval.json").read_text())
    expected = json.loads((reference / "eval.json").read_text())
    assert resumed["meta"]["store"] == {"hits": done, "misses": 6 - done}
    assert resumed["per_task"] == expected["per_task"]
    assert (killed / "eval_records.jsonl").read_text() == (reference / "eval_records.jsonl").read_text()
