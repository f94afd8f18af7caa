"""Sharding: which questions a rank takes, how ranks wait for each other's files, and that merging the shards
of a round or an evaluation gives exactly what one process gives (scripted engine: plumbing only; the real
multi-process runs are in test_multiprocess.py)."""

from __future__ import annotations

import threading
import time

import pytest
from method_fakes import ScriptedEngine, make_questions
from test_method_synthesis import small, toy_respond
from test_store import _tokenizer

from regenesis_pl.engines.base import Completion, RequestOutput
from regenesis_pl.evaluation import evaluate_questions
from regenesis_pl.layout import RunLayout
from regenesis_pl.method.synthesis import merge_shards, synthesize_round
from regenesis_pl.round.synthesize import synthesize_to_store
from regenesis_pl.sharding import Shard, ShardedJob, process_shard, wait_for_files


def test_shards_partition_the_items_in_order():
    items = list(range(11))
    parts = [Shard(r, 3).take(items) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(x for p in parts for x in p) == items
    assert Shard().take(items) == items and Shard().name == "" and Shard(1, 2).name == "rank-1"


def test_tensor_parallel_groups_share_one_engine():
    shards = [Shard(r, 4, group_size=2) for r in range(4)]
    assert [s.has_engine for s in shards] == [True, False, True, False]
    assert [s.take(list(range(5))) for s in shards] == [[0, 2, 4], [], [1, 3], []]
    with pytest.raises(ValueError, match="multiple of engine.tensor_parallel_size"):
        Shard(0, 3, group_size=2)
    with pytest.raises(ValueError, match="outside a world"):
        Shard(2, 2)


def test_process_shard_reads_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert process_shard() == Shard(3, 4)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert process_shard() == Shard()


def test_wait_for_files_returns_when_they_appear_and_times_out_naming_them(tmp_path):
    late = tmp_path / "rank-1.json"
    threading.Timer(0.3, late.write_text, args=("{}",)).start()
    start = time.monotonic()
    wait_for_files([late], "test", timeout_minutes=1, poll_s=0.05)
    assert time.monotonic() - start < 5
    with pytest.raises(TimeoutError, match=r"waited 0.002 min for 1 file\(s\), e.g. .*never.json"):
        wait_for_files([tmp_path / "never.json"], "round 0 synthesis", timeout_minutes=0.002, poll_s=0.01)


def _without_call_counts(stats: dict) -> dict:
    return {**stats, "tokens": {k: v for k, v in stats["tokens"].items() if k != "engine_calls"}}


@pytest.mark.parametrize("config", [small(), small(hint_stages=["adapt", "structure"]), small(method="star"),
                                    small(method="lmsi", max_paths_per_question=1),
                                    small(candidate_set="released", num_selections=2, chunk_size=3,
                                          hint_stages=["adapt"])])
def test_merged_shards_equal_one_process(config):
    questions = make_questions(7)
    whole = synthesize_round(ScriptedEngine(toy_respond), questions, config)
    parts = [synthesize_round(ScriptedEngine(toy_respond), Shard(r, 3).take(questions), config) for r in range(3)]
    merged = merge_shards(parts, questions, config)
    assert [c.to_dict() for c in merged.candidates] == [c.to_dict() for c in whole.candidates]
    assert _without_call_counts(merged.stats) == _without_call_counts(whole.stats)
    assert [c.to_dict() for c in merge_shards([whole], questions, config).candidates] == [
        c.to_dict() for c in whole.candidates]  # one part: the order is kept as it is


def test_merge_refuses_candidates_of_other_questions():
    questions = make_questions(4)
    part = synthesize_round(ScriptedEngine(toy_respond), questions, small())
    with pytest.raises(ValueError, match="not in this round"):
        merge_shards([part], questions[:2], small())


def test_sharded_round_files_equal_one_process(tmp_path):
    """Two ranks (threads here) write their parts; rank 0 merges; the files equal a one-process run's."""
    questions, config = make_questions(6), small(hint_stages=["adapt", "structure"])
    tokenizer = _tokenizer()

    def engine():  # the store renders prompts with the engine's tokenizer
        eng = ScriptedEngine(toy_respond)
        eng.tokenizer = tokenizer
        return eng

    single = synthesize_to_store(engine(), questions, config, run_dir=tmp_path / "one", say=lambda _: None)
    results = {}

    def rank(r):
        results[r] = synthesize_to_store(engine(), questions, config, run_dir=tmp_path / "two",
                                         shard=Shard(r, 2), wait_minutes=1, say=lambda _: None)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    one, two = RunLayout(tmp_path / "one"), RunLayout(tmp_path / "two")
    assert two.kept(0).read_text() == one.kept(0).read_text() and one.kept(0).read_text()
    assert two.candidates(0).read_text() == one.candidates(0).read_text()
    assert [c.to_dict() for c in results[1].kept] == [c.to_dict() for c in single.kept]
    assert results[0].stats["shards"]["processes"] == 2
    for key in ("questions_solved", "candidates", "kept", "verdicts", "guidelines", "hint"):
        assert results[0].stats[key] == single.stats[key], key
    assert _without_call_counts(results[0].stats)["tokens"] == _without_call_counts(single.stats)["tokens"]
    assert sorted(p.name for p in next((tmp_path / "two" / "round-0").glob("store-*")).glob("generations*")) == [
        "generations.rank-0.jsonl", "generations.rank-1.jsonl"]


class Echo:
    """Greedy 'answers': the question's gold answer for even ids, a wrong one for odd ids."""

    name, tokenizer, weights_id = "echo", None, "echo-0"

    def generate(self, conversations, sampling, request_seeds=None, progress=None, on_finished=None):
        outs = []
        for conv in conversations:
            a = int(conv[-1]["content"].split("What is ")[1].split(" ")[0])
            answer = a + 10 if a % 2 == 0 else a
            outs.append(RequestOutput([Completion(text=f"so \\boxed{{{answer}}}", num_tokens=3, finish_reason="stop")], prompt_tokens=9))
        return outs


def test_sharded_evaluation_equals_one_process(tmp_path):
    questions = make_questions(9)
    whole = evaluate_questions(Echo(), questions, progress=None)
    layout = RunLayout(tmp_path)
    results = {}

    def rank(r):  # two ranks as threads: each answers its share, rank 0 merges, rank 1 waits for every part
        job = ShardedJob(Shard(r, 2), part=lambda k: layout.evaluation_shard("base", "t", k), what="eval base",
                         failures=layout.failures, wait_minutes=1)
        results[r] = evaluate_questions(Echo(), questions, progress=None, job=job)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    merged = results[0]
    assert results[1] is None and sorted(results) == [0, 1]
    assert merged.to_json() == whole.to_json() and merged.records == whole.records
    assert whole.per_task["toy_add"].correct == 5


def test_a_failed_rank_ends_the_others_wait_but_an_old_marker_does_not(tmp_path):
    from regenesis_pl.sharding import clear_failed, mark_failed

    failures = tmp_path / "failed"
    mark_failed(failures, 1, RuntimeError("engine died\nsecond line"))
    started = time.time()
    with pytest.raises(RuntimeError, match=r"round 0 merge: rank-1 failed \(RuntimeError: engine died\)"):
        wait_for_files([tmp_path / "merged.json"], "round 0 merge", timeout_minutes=1, poll_s=0.01,
                       failures=failures, since=started)
    old = time.time() - 3600  # an earlier run's marker is no reason to stop
    import os

    os.utime(failures / "rank-1", (old, old))
    with pytest.raises(TimeoutError):
        wait_for_files([tmp_path / "merged.json"], "round 0 merge", timeout_minutes=0.002, poll_s=0.01,
                       failures=failures, since=started)
    clear_failed(failures, 1)
    assert not (failures / "rank-1").exists()


def test_every_rank_checks_all_questions_before_any_work(tmp_path):
    """A question without a gold answer in rank 1's shard fails rank 0 too, at once (no rank fails alone)."""
    from regenesis_pl.tasks.types import AnswerType, Question

    questions = make_questions(3) + [Question(id="nogold", task="toy_add", text="What is 1 + 1?",
                                              answer_type=AnswerType.NUMERIC, answer=None)]
    assert "nogold" not in {q.id for q in Shard(0, 2).take(questions)}
    with pytest.raises(ValueError, match="have no gold answer"):
        synthesize_to_store(ScriptedEngine(toy_respond), questions, small(), run_dir=tmp_path, shard=Shard(0, 2),
                            wait_minutes=0.01, say=lambda _: None)
    assert not (tmp_path / "round-0" / "shards").exists()
