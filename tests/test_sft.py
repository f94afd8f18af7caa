"""SFT tokenization, padding, length-grouped batching, packing and the held-out split."""

from __future__ import annotations

import random

import pytest
import torch

from regenesis_pl.chat import render_prompt, sft_messages
from regenesis_pl.data.sft import (
    IGNORE_INDEX,
    LengthGroupedBatchSampler,
    SFTCollator,
    SFTDataset,
    TooLongError,
    encode_conversation,
    encode_conversations,
    pack_records,
    split_train_val,
)
from regenesis_pl.tasks.types import AnswerType, Question


def pad_fraction(lengths, batches) -> float:
    """Share of padding tokens when ``batches`` (lists of record indices) are padded to their longest."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 1.0 - real / padded if padded else 0.0


def chain_conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """SFT chats of varied length: add up 2..40 numbers, one worked step per line, boxed answer."""
    rng = random.Random(seed)
    convs = []
    for i in range(n):
        numbers = [rng.randint(1, 99) for _ in range(rng.randint(2, 40))]
        question = Question(id=f"q{i}", task="sum", text=f"What is {' + '.join(map(str, numbers))}?",
                            answer_type=AnswerType.NUMERIC, answer=str(sum(numbers)))
        total, steps = numbers[0], []
        for x in numbers[1:]:
            steps.append(f"{total} + {x} = {total + x}.")
            total += x
        convs.append(sft_messages(question, "\n".join(steps) + f"\nThe answer is \\boxed{{{total}}}."))
    return convs


# ------------------------------------------------------------------ pure (no tokenizer)
def test_sampler_covers_every_index_once_and_is_deterministic_per_epoch():
    lengths = [random.Random(1).randint(5, 300) for _ in range(103)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=4, seed=7, mega_batch_mult=5)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(103))
    assert len(first) == len(sampler) == 26
    assert list(LengthGroupedBatchSampler(lengths, 4, seed=7, mega_batch_mult=5)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_sampler_without_shuffle_sorts_longest_first_and_drop_last():
    lengths = [3, 9, 1, 7, 5]
    assert list(LengthGroupedBatchSampler(lengths, 2, shuffle=False)) == [[1, 3], [4, 0], [2]]
    sampler = LengthGroupedBatchSampler(lengths, 2, shuffle=False, drop_last=True)
    assert list(sampler) == [[1, 3], [4, 0]] and len(sampler) == 2


def test_sampler_ranks_split_the_same_global_order():
    lengths = list(range(1, 42))
    ranks = [list(LengthGroupedBatchSampler(lengths, 3, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 7
    seen = [i for batches in ranks for b in batches for i in b]
    assert len(seen) == len(set(seen))
    with pytest.raises(ValueError, match="rank=2"):
        LengthGroupedBatchSampler(lengths, 3, num_replicas=2, rank=2)


def test_collator_pads_right_with_masks():
    batch = SFTCollator(pad_token_id=0, pad_to_multiple_of=4)([
        {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]},
        {"input_ids": [8], "labels": [8]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert "position_ids" not in batch
    with pytest.raises(ValueError, match="pad_token_id is None"):
        SFTCollator(None)


def test_pack_records_keeps_tokens_resets_positions_and_masks_record_starts():
    records = [{"input_ids": list(range(100 * k, 100 * k + n)), "labels": list(range(100 * k, 100 * k + n))}
               for k, n in enumerate([6, 3, 5, 2, 4])]
    rows = pack_records(records, max_length=8)
    assert all(len(r["input_ids"]) <= 8 for r in rows)
    assert sorted(t for r in rows for t in r["input_ids"]) == sorted(t for r in records for t in r["input_ids"])
    for row in rows:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert all(row["labels"][i] == IGNORE_INDEX for i in starts)
        assert sum(label != IGNORE_INDEX for label in row["labels"]) == len(row["labels"]) - len(starts)
    assert len(rows) == 3  # 6+2, 5+3, 4
    batch = SFTCollator(pad_token_id=0)(rows)
    assert batch["position_ids"][2].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="max_length=4"):
        pack_records(records, max_length=4)


def test_split_train_val_is_seeded_and_keeps_groups_together():
    items = [{"qid": i // 3, "k": i} for i in range(60)]
    train, val = split_train_val(items, 0.1, seed=1, key=lambda r: r["qid"])
    assert len(val) == 6 and len(train) == 54
    assert not {r["qid"] for r in train} & {r["qid"] for r in val}
    assert split_train_val(items, 0.1, seed=1, key=lambda r: r["qid"]) == (train, val)
    assert split_train_val(items, 0.1, seed=2, key=lambda r: r["qid"])[1] != val
    assert split_train_val(items, 0.0) == (items, [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(items, 1.0)


def test_dataset_rejects_malformed_records():
    with pytest.raises(ValueError, match="record 1"):
        SFTDataset([{"input_ids": [1], "labels": [1]}, {"input_ids": [1, 2], "labels": [1]}])


# ------------------------------------------------------------------ real tokenizer / model
@pytest.fixture(scope="module")
def tokenizer():
    from regenesis_pl.model.build import load_tokenizer

    return load_tokenizer("embedded")


@pytest.mark.slow
def test_labels_are_masked_exactly_on_the_prompt(tokenizer):
    question = Question(id="1", task="t", text="What is 2 + 2?", answer_type=AnswerType.NUMERIC, answer="4")
    messages = sft_messages(question, "\n\n2 + 2 = 4. The answer is \\boxed{4}.")
    record = encode_conversation(tokenizer, messages, max_length=256)
    prompt_ids = tokenizer(render_prompt(tokenizer, messages[:1]), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert record["input_ids"][:n] == prompt_ids  # exactly what the engine sees before generating
    assert record["labels"][:n] == [IGNORE_INDEX] * n
    assert record["labels"][n:] == record["input_ids"][n:]
    trained = tokenizer.decode(record["input_ids"][n:])
    assert trained.startswith("\n\n2 + 2 = 4.") and tokenizer.eos_token in trained


@pytest.mark.slow
def test_multi_turn_trains_every_assistant_turn_only(tokenizer):
    messages = [{"role": "user", "content": "Say A."}, {"role": "assistant", "content": "A"},
                {"role": "user", "content": "Say B."}, {"role": "assistant", "content": "B"}]
    record = encode_conversation(tokenizer, messages, 256)
    trained = [t for t, label in zip(record["input_ids"], record["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained).replace("\n", "") == f"A{tokenizer.eos_token}B{tokenizer.eos_token}"


@pytest.mark.slow
def test_too_long_records_are_dropped_or_truncated_and_counted(tokenizer):
    convs = chain_conversations(20, seed=3)
    lengths = [len(encode_conversation(tokenizer, c, 10_000)["input_ids"]) for c in convs]
    limit = sorted(lengths)[10]
    dropped = encode_conversations(tokenizer, convs, limit)
    assert dropped.dropped == sum(n > limit for n in lengths) and len(dropped.records) == 20 - dropped.dropped
    assert dropped.kept_index == [i for i, n in enumerate(lengths) if n <= limit]
    cut = encode_conversations(tokenizer, convs, limit, overflow="truncate")
    assert cut.truncated == dropped.dropped and cut.dropped == 0
    assert all(len(r["input_ids"]) <= limit for r in cut.records)
    with pytest.raises(TooLongError, match="max_length=20"):
        encode_conversation(tokenizer, convs[0], 20, truncate=True)  # the prompt alone is longer
    assert encode_conversations(tokenizer, convs[:3], 20, overflow="truncate").dropped == 3


@pytest.mark.slow
def test_template_that_rewrites_the_prompt_is_refused(tokenizer):
    import copy

    broken = copy.copy(tokenizer)
    broken.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                            "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    with pytest.raises(ValueError, match="prefix"):
        encode_conversation(broken, chain_conversations(1)[0], 256)


@pytest.mark.slow
def test_length_grouping_keeps_padding_under_ten_percent_on_real_records(tokenizer):
    records = encode_conversations(tokenizer, chain_conversations(400, seed=0), 512).records
    lengths = SFTDataset(records).lengths
    assert max(lengths) > 3 * min(lengths)  # the records really vary
    grouped = LengthGroupedBatchSampler(lengths, batch_size=8, seed=0)
    random_order = list(range(len(lengths)))
    random.Random(0).shuffle(random_order)
    plain = [random_order[i: i + 8] for i in range(0, len(lengths), 8)]
    for epoch in range(3):
        grouped.set_epoch(epoch)
        assert pad_fraction(lengths, list(grouped)) < 0.10
    assert pad_fraction(lengths, plain) > 0.25  # what padding to the longest in random order costs here


@pytest.mark.slow
def test_packed_row_gives_the_same_logits_as_records_alone(tokenizer):
    from regenesis_pl.model.build import build_model

    torch.manual_seed(0)
    records = encode_conversations(tokenizer, chain_conversations(3, seed=5), 512).records
    net = build_model("embedded", mode="full").eval()
    rows = pack_records(records, max_length=sum(len(r["input_ids"]) for r in records) + 5)
    assert len(rows) == 1
    batch = SFTCollator(tokenizer.pad_token_id)(rows)
    with torch.no_grad():
        packed = net(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        crossing = net(input_ids=batch["input_ids"]).logits[0]
        start = 0
        for record in sorted(records, key=lambda r: -len(r["input_ids"])):
            n = len(record["input_ids"])
            alone = net(input_ids=torch.tensor([record["input_ids"]])).logits[0]
            assert torch.allclose(packed[start: start + n], alone, atol=1e-3)
            if start:
                assert not torch.allclose(crossing[start: start + n], alone, atol=1e-1)
            start += n
