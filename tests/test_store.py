"""The generation store and CachedEngine: keys, hits/misses, torn lines, settings and weights changes, errors.

These tests exercise store plumbing, so the engine is a small deterministic stand-in whose output is a
function of (prompt, seed, weights); it renders prompts with a real transformers tokenizer built in-test.
The real-model resume tests are in tests/test_synthesize.py.
"""

from __future__ import annotations

import json

import pytest

from regenesis_pl.atomic import write_jsonl
from regenesis_pl.engines.base import Completion, Engine, RequestOutput, SamplingConfig
from regenesis_pl.method.records import Candidate
from regenesis_pl.round.cached_engine import CachedEngine
from regenesis_pl.round.sft_records import load_sft_records, sft_records
from regenesis_pl.round.store import GenerationStore, prepare_store_dir, request_key
from regenesis_pl.tasks.types import AnswerType, Question


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    return tok


class EchoEngine:
    """Deterministic: the completion text names the prompt, the seed and the weights; counts its work."""

    name = "echo"

    def __init__(self, fail_after_calls: int | None = None, die_after_outputs: int | None = None,
                 streams: bool = True) -> None:
        self._tokenizer = _tokenizer()
        self.weights = "base"
        self.calls = 0
        self.requests = 0
        self.fail_after_calls = fail_after_calls
        self.die_after_outputs = die_after_outputs  # die in the middle of a call, after reporting this many
        self.streams = streams  # report each finished output as it is done (as the real engines do)

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def weights_id(self) -> str:
        return self.weights

    def generate(self, conversations, sampling, request_seeds=None, progress=None, on_finished=None):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise RuntimeError("engine died")
        self.calls += 1
        seeds = request_seeds if request_seeds is not None else [sampling.seed + i for i in range(len(conversations))]
        self.requests += len(conversations)
        outputs = [RequestOutput([Completion(f"{conv[-1]['content']}|seed={s}|w={self.weights}|"
                                             f"t={sampling.temperature}|k={k}", 3, "stop") for k in range(sampling.n)],
                                 prompt_tokens=5)
                   for conv, s in zip(conversations, seeds)]
        for i in reversed(range(len(outputs))):  # finishing out of order, as a real engine may
            if self.die_after_outputs is not None and len(outputs) - 1 - i >= self.die_after_outputs:
                raise RuntimeError("engine died mid-call")
            if self.streams and on_finished is not None:
                on_finished([(i, outputs[i])])
        return outputs

    def set_adapter(self, adapter_dir):
        self.weights = f"base+{adapter_dir}"

    def load_weights(self, model_dir, weights_id=None):
        self.weights = weights_id or model_dir

    def sleep(self):
        pass

    def wake(self):
        pass

    def close(self):
        pass


def _convs(n: int):
    return [[{"role": "user", "content": f"question {i}"}] for i in range(n)]


SAMPLING = SamplingConfig(temperature=0.8, top_p=0.9, max_tokens=16)


def test_cached_engine_satisfies_protocol(tmp_path):
    assert isinstance(CachedEngine(EchoEngine(), tmp_path), Engine)


def test_hits_and_misses_across_instances(tmp_path):
    inner = EchoEngine()
    eng = CachedEngine(inner, tmp_path, flush_every=3)
    first = eng.generate(_convs(7), SAMPLING, request_seeds=list(range(7)))
    assert (eng.hits, eng.misses, inner.calls) == (0, 7, 3)  # 3 + 3 + 1 requests
    eng.store.close()
    again = CachedEngine(EchoEngine(), tmp_path, flush_every=3)
    second = again.generate(_convs(9), SAMPLING, request_seeds=list(range(9)))
    assert (again.hits, again.misses) == (7, 2)
    assert [o.completions for o in second[:7]] == [o.completions for o in first]
    assert second[8].completions[0].text == "question 8|seed=8|w=base|t=0.8|k=0"
    assert second[0].extra.get("cached") is True and not second[8].extra.get("cached")
    assert len((tmp_path / "generations.jsonl").read_text().splitlines()) == 9


def test_default_seeds_and_duplicates(tmp_path):
    inner = EchoEngine()
    eng = CachedEngine(inner, tmp_path)
    convs = _convs(2) + _convs(1)  # the third request repeats the first with seed base+2 -> a distinct key
    outs = eng.generate(convs, SamplingConfig(temperature=0.8, seed=10))
    assert [o.completions[0].text.split("|")[1] for o in outs] == ["seed=10", "seed=11", "seed=12"]
    dup = eng.generate(_convs(1) * 3, SAMPLING, request_seeds=[5, 5, 5])
    assert len({o.completions[0].text for o in dup}) == 1
    assert inner.requests == 4  # the three identical requests were generated once
    with pytest.raises(ValueError, match="request_seeds"):
        eng.generate(_convs(2), SAMPLING, request_seeds=[1])


def test_settings_seed_and_weights_changes_miss(tmp_path):
    inner = EchoEngine()
    eng = CachedEngine(inner, tmp_path)
    eng.generate(_convs(2), SAMPLING, request_seeds=[1, 2])
    eng.generate(_convs(2), SamplingConfig(temperature=0.8, top_p=0.9, max_tokens=16, seed=99),
                 request_seeds=[1, 2])
    assert eng.misses == 2 and eng.hits == 2  # the base seed is not part of the key, request seeds are
    eng.generate(_convs(2), SamplingConfig(temperature=0.5, top_p=0.9, max_tokens=16), request_seeds=[1, 2])
    assert eng.misses == 4
    eng.generate(_convs(2), SAMPLING, request_seeds=[3, 4])
    assert eng.misses == 6
    eng.set_adapter("adapters/round-1")
    outs = eng.generate(_convs(2), SAMPLING, request_seeds=[1, 2])
    assert eng.misses == 8 and "w=base+adapters/round-1" in outs[0].completions[0].text
    eng.set_adapter(None)  # the fake names these weights "base+None", not "base": a new id, so a miss again
    outs = eng.generate(_convs(2), SAMPLING, request_seeds=[1, 2])
    assert eng.misses == 10 and eng.hits == 2 and "w=base+None" in outs[0].completions[0].text
    eng.load_weights("base-folder", weights_id="base")  # the original weights id again: answered from the store
    outs = eng.generate(_convs(2), SAMPLING, request_seeds=[1, 2])
    assert eng.misses == 10 and eng.hits == 4 and "w=base|" in outs[0].completions[0].text
    assert request_key("a", "p", SAMPLING, 1) != request_key("b", "p", SAMPLING, 1)
    assert request_key("a", "p", SAMPLING, 1) != request_key("a", "p ", SAMPLING, 1)


def test_torn_last_line_is_skipped_counted_and_cut(tmp_path, caplog):
    eng = CachedEngine(EchoEngine(), tmp_path, flush_every=2)
    eng.generate(_convs(4), SAMPLING, request_seeds=[0, 1, 2, 3])
    eng.store.close()
    path = tmp_path / "generations.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 25])  # a kill in the middle of writing the 4th line
    again = CachedEngine(EchoEngine(), tmp_path, flush_every=2)
    assert again.store.skipped_lines == 1 and len(again.store) == 3
    assert "torn last line" in caplog.text
    outs = again.generate(_convs(5), SAMPLING, request_seeds=[0, 1, 2, 3, 4])
    assert (again.hits, again.misses) == (3, 2)
    assert outs[3].completions[0].text == "question 3|seed=3|w=base|t=0.8|k=0"
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["key"] for line in lines)
    again.store.close()
    assert len(GenerationStore(tmp_path)) == 5


def test_unreadable_middle_line_is_skipped(tmp_path):
    eng = CachedEngine(EchoEngine(), tmp_path)
    eng.generate(_convs(3), SAMPLING, request_seeds=[0, 1, 2])
    eng.store.close()
    path = tmp_path / "generations.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{not json\n" + lines[1] + lines[2])
    store = GenerationStore(tmp_path)
    assert store.skipped_lines == 1 and len(store) == 3


@pytest.mark.parametrize("bad", ['"completions": null', '"completions": []', '"completions": [{"txt": 1}]',
                                 '"completions": "text"'])
def test_line_with_a_key_but_bad_completions_is_skipped_at_load(tmp_path, bad):
    eng = CachedEngine(EchoEngine(), tmp_path)
    eng.generate(_convs(2), SAMPLING, request_seeds=[0, 1])
    eng.store.close()
    path = tmp_path / "generations.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    key = json.loads(lines[1])["key"]
    path.write_text(lines[0] + f'{{"key": "{key}", {bad}}}\n')
    again = CachedEngine(EchoEngine(), tmp_path)
    assert again.store.skipped_lines == 1 and key not in again.store
    outs = again.generate(_convs(2), SAMPLING, request_seeds=[0, 1])  # regenerated, not a crash in get()
    assert (again.hits, again.misses) == (1, 1) and outs[1].completions[0].text.startswith("question 1|seed=1")


def test_shards_write_their_own_files_and_read_everyone_s(tmp_path):
    """Rank r writes generations.rank-r.jsonl; every store indexes all files, so a resume with another number
    of processes (here: one) finds everything any rank stored."""
    ranks = [CachedEngine(EchoEngine(), tmp_path, shard=f"rank-{r}") for r in range(2)]
    ranks[0].generate(_convs(4)[0::2], SAMPLING, request_seeds=[0, 2])
    ranks[1].generate(_convs(4)[1::2], SAMPLING, request_seeds=[1, 3])
    for eng in ranks:
        eng.store.close()
    assert sorted(p.name for p in tmp_path.glob("generations*.jsonl")) == [
        "generations.rank-0.jsonl", "generations.rank-1.jsonl"]
    single = CachedEngine(EchoEngine(), tmp_path)
    outs = single.generate(_convs(4), SAMPLING, request_seeds=[0, 1, 2, 3])
    assert (single.hits, single.misses) == (4, 0)
    assert [o.completions[0].text.split("|")[1] for o in outs] == [f"seed={i}" for i in range(4)]
    single.store.close()
    # another rank's torn last line (it may still be writing) is ignored, never cut from its file
    other = tmp_path / "generations.rank-1.jsonl"
    size = other.stat().st_size
    with open(other, "ab") as f:
        f.write(b'{"key": "half')
    store = GenerationStore(tmp_path)
    assert len(store) == 4 and other.stat().st_size == size + 13
    store.close()


def test_engine_error_keeps_stored_work(tmp_path):
    failing = EchoEngine(fail_after_calls=2)
    eng = CachedEngine(failing, tmp_path, flush_every=4)
    with pytest.raises(RuntimeError, match="engine died"):
        eng.generate(_convs(10), SAMPLING, request_seeds=list(range(10)))
    eng.store.close()
    assert eng.misses == 8 and len(GenerationStore(tmp_path)) == 8
    inner = EchoEngine()
    rerun = CachedEngine(inner, tmp_path, flush_every=4)
    outs = rerun.generate(_convs(10), SAMPLING, request_seeds=list(range(10)))
    assert (rerun.hits, rerun.misses, inner.requests, inner.calls) == (8, 2, 2, 1)  # only the missing are split
    assert [o.completions[0].text.split("|")[1] for o in outs] == [f"seed={i}" for i in range(10)]


def test_each_completion_is_stored_as_it_finishes_so_a_death_mid_call_keeps_them(tmp_path):
    """One engine call for the whole stage (no sub-batches); what finished before the engine died is stored."""
    dying = EchoEngine(die_after_outputs=4)
    eng = CachedEngine(dying, tmp_path)
    with pytest.raises(RuntimeError, match="died mid-call"):
        eng.generate(_convs(10), SAMPLING, request_seeds=list(range(10)))
    eng.store.close()
    assert dying.calls == 1 and eng.misses == 4 and len(GenerationStore(tmp_path)) == 4
    inner = EchoEngine()
    rerun = CachedEngine(inner, tmp_path)
    outs = rerun.generate(_convs(10), SAMPLING, request_seeds=list(range(10)))
    assert (rerun.hits, rerun.misses, inner.calls, inner.requests) == (4, 6, 1, 6)
    assert [o.completions[0].text.split("|")[1] for o in outs] == [f"seed={i}" for i in range(10)]


def test_an_engine_that_does_not_stream_is_stored_when_its_call_returns(tmp_path):
    eng = CachedEngine(EchoEngine(streams=False), tmp_path)
    outs = eng.generate(_convs(3), SAMPLING, request_seeds=[0, 1, 2])
    assert eng.misses == 3 and len(eng.store) == 3 and outs[2].completions[0].text.startswith("question 2|seed=2")


def test_n_completions_round_trip(tmp_path):
    eng = CachedEngine(EchoEngine(), tmp_path)
    sampling = SamplingConfig(n=3, temperature=1.0)
    first = eng.generate(_convs(2), sampling, request_seeds=[7, 8])
    eng.store.close()
    second = CachedEngine(EchoEngine(), tmp_path).generate(_convs(2), sampling, request_seeds=[7, 8])
    assert [len(o.completions) for o in second] == [3, 3]
    assert [o.completions for o in second] == [o.completions for o in first]
    assert second[0].prompt_tokens == 5


def test_prepare_store_dir_reuse_and_change(tmp_path):
    said: list[str] = []
    meta = {"method": "regenesis", "round": 0, "model": "m", "config": {"temperature": 1.2}}
    a = prepare_store_dir(tmp_path, meta, say=said.append)
    assert prepare_store_dir(tmp_path, dict(meta), say=said.append) == a and said == []
    b = prepare_store_dir(tmp_path, {**meta, "method": "star", "config": {"temperature": 0.7}},
                          say=said.append)
    assert b != a and len(said) == 1
    assert "written by method=regenesis" in said[0] and "config.temperature" in said[0]
    assert "reusing nothing" in said[0]
    assert json.loads((tmp_path / "meta.json").read_text())["method"] == "star"
    assert json.loads((b / "meta.json").read_text())["config"] == {"temperature": 0.7}


def test_one_open_store_per_directory(tmp_path):
    store = GenerationStore(tmp_path)
    with pytest.raises(BlockingIOError, match="in use by another running job"):  # an OSError: one line, exit 2
        GenerationStore(tmp_path)
    store.close()
    GenerationStore(tmp_path).close()


def test_flush_every_validated(tmp_path):
    with pytest.raises(ValueError, match="flush_every"):
        CachedEngine(EchoEngine(), tmp_path, flush_every=0)


def _question(i: int) -> Question:
    return Question(id=f"q{i}", task="arith", text=f"What is {i} + {i}?", answer_type=AnswerType.NUMERIC,
                    answer=str(2 * i))


def test_sft_export_round_trip(tmp_path):
    questions = [_question(i) for i in range(3)]
    kept = [Candidate(question_id="q1", task="arith", method="regenesis", round=1, guideline_id="g05",
                      path="1 + 1 = 2. \\boxed{2}", kept=True),
            Candidate(question_id="q2", task="arith", method="regenesis", round=1, guideline_id="g07",
                      hint=True, path="2 + 2 = 4. \\boxed{4}", kept=True)]
    records = sft_records(kept, questions)
    assert records[0]["messages"][0]["role"] == "user" and "What is 1 + 1?" in records[0]["messages"][0]["content"]
    assert records[1]["messages"][-1] == {"role": "assistant", "content": "2 + 2 = 4. \\boxed{4}"}
    assert records[1]["hint"] is True and records[1]["guideline_id"] == "g07"
    path = write_jsonl(tmp_path / "kept.jsonl", records)
    assert load_sft_records(path) == records
    with pytest.raises(ValueError, match="no matching question"):
        sft_records([Candidate(question_id="q9", task="arith", method="regenesis", path="x")], questions)
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: missing fields"):
        load_sft_records(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError):
        load_sft_records(tmp_path / "absent.jsonl")


def test_a_stream_through_the_store_answers_stored_requests_first_and_stores_before_any_follow_up(tmp_path):
    """Stored requests are answered (and their follow-ups asked for) before the engine runs; a request repeated
    while its twin runs is generated once; each output is durable before its follow-ups are asked for."""
    from regenesis_pl.engines.base import Request

    inner = EchoEngine()
    eng = CachedEngine(inner, tmp_path)
    eng.generate(_convs(2), SAMPLING, request_seeds=[0, 1])
    convs = _convs(3)
    first = [Request(c, SAMPLING, s, "a") for c, s in zip(convs, [0, 1, 2])] + [Request(convs[2], SAMPLING, 2, "a")]
    seen, stored_then = [], {}

    def follow_up(done):
        seen.extend(i for i, _ in done)
        stored_then.update((i, len(eng.store)) for i, _ in done)
        return [Request([{"role": "user", "content": f"next {i}"}], SAMPLING, 0, "b") for i, _ in done if i < 4]

    inner.calls = inner.requests = eng.hits = eng.misses = 0
    assert eng.stream(first, follow_up) == 8
    assert sorted(seen) == list(range(8)) and set(seen[:2]) == {0, 1}
    assert (inner.requests, eng.misses) == (1 + 4, 1 + 4)  # request 2 once (3 is its twin), the follow-ups of 0..3
    assert eng.hits == 2 + 1  # the two stored ones, and the twin (answered by what was stored for request 2)
    assert stored_then[2] >= 3 and stored_then[3] >= 3


def test_a_stream_killed_mid_way_resumes_generating_only_what_is_missing(tmp_path):
    from regenesis_pl.engines.base import Request

    def follow_up(done):
        return [Request([{"role": "user", "content": f"then {i}"}], SAMPLING, 5, "b") for i, _ in done if i < 4]

    first = [Request(c, SAMPLING, s, "a") for s, c in enumerate(_convs(4))]
    dying = CachedEngine(EchoEngine(fail_after_calls=1), tmp_path)  # the second wave (the follow-ups) fails
    with pytest.raises(RuntimeError, match="engine died"):
        dying.stream(first, follow_up)
    dying.store.close()
    assert len(GenerationStore(tmp_path)) == 4
    inner = EchoEngine()
    rerun = CachedEngine(inner, tmp_path)
    assert rerun.stream(first, follow_up) == 8
    assert (rerun.hits, rerun.misses, inner.requests) == (4, 4, 4)
