"""SFT records as tokens: assistant-only loss mask, padding, length-grouped batches, packing, held-out split.

A conversation is rendered with the one chat template (``regenesis_pl.chat.render_prompt``) and cut into
alternating segments: everything up to and including each assistant header (masked, label -100) and each
assistant reply with its end-of-turn marker (trained). Segments are tokenized one by one, so the prompt
tokens are exactly the tokens an engine sees when it is asked to generate the reply (tokenizing the
whole text at once can merge the header's newline with a reply that starts with a newline).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
from torch.utils.data import Dataset, Sampler

from regenesis_pl.chat import render_prompt

IGNORE_INDEX = -100
T = TypeVar("T")


class TooLongError(ValueError):
    """A conversation does not fit ``max_length`` tokens."""


def _segments(tokenizer, messages: Sequence[dict[str, str]]) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, trained) pieces; assistant replies are trained."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("SFT conversation must end with an assistant turn; got roles "
                         f"{[m.get('role') for m in messages]}")
    full = render_prompt(tokenizer, list(messages), add_generation_prompt=False)
    pieces: list[tuple[str, bool]] = []
    done = 0  # characters of ``full`` already assigned to a piece
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = render_prompt(tokenizer, list(messages[:i]), add_generation_prompt=True)
        upto = render_prompt(tokenizer, list(messages[: i + 1]), add_generation_prompt=False)
        if not (full.startswith(upto) and upto.startswith(prompt) and len(prompt) >= done):
            name = getattr(tokenizer, "name_or_path", "?")
            raise ValueError(f"chat template of {name!r} does not render the prompt of assistant turn {i} as a "
                             "prefix of the full conversation, so the loss mask cannot be placed; use a "
                             "template that keeps earlier turns unchanged")
        pieces.append((full[done: len(prompt)], False))
        pieces.append((full[len(prompt): len(upto)], True))
        done = len(upto)
    pieces.append((full[done:], False))
    return [(text, trained) for text, trained in pieces if text]


def _tokenize(tokenizer, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
    input_ids: list[int] = []
    labels: list[int] = []
    for text, trained in _segments(tokenizer, messages):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
    return input_ids, labels


def _fit(input_ids: list[int], labels: list[int], max_length: int, truncate: bool) -> dict[str, list[int]]:
    if len(input_ids) > max_length:
        trained_left = any(label != IGNORE_INDEX for label in labels[:max_length])
        if not truncate or not trained_left:
            raise TooLongError(f"conversation has {len(input_ids)} tokens > max_length={max_length}"
                               f"{' and its prompt alone fills it' if truncate else ''}; raise max_length, "
                               "shorten the path, or use overflow='truncate'")
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def encode_conversation(tokenizer, messages: Sequence[dict[str, str]], max_length: int,
                        truncate: bool = False) -> dict[str, list[int]]:
    """Token ids and labels of one chat; labels are -100 on every token outside the assistant replies.

    The assistant reply's end-of-turn marker (and whatever the template puts right after the reply text in
    that turn) is trained, so the model learns to stop.

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template.
        messages: Chat messages ending with an assistant turn (e.g. ``chat.sft_messages(question, path)``).
        max_length: Maximum number of tokens.
        truncate: Cut a too-long record to ``max_length`` (the reply loses its end) instead of raising
            ``TooLongError``. A record whose prompt alone fills ``max_length`` always raises.
    """
    return _fit(*_tokenize(tokenizer, messages), max_length, truncate)


@dataclass
class EncodedSet:
    """Encoded records plus what happened to the rest.

    Attributes:
        records: Encoded records (``input_ids``, ``labels``), in input order.
        kept_index: For each record, the index of its conversation in the input.
        dropped: How many conversations were too long and dropped.
        truncated: How many conversations were cut to ``max_length``.
    """

    records: list[dict[str, list[int]]] = field(default_factory=list)
    kept_index: list[int] = field(default_factory=list)
    dropped: int = 0
    truncated: int = 0


def encode_conversations(tokenizer, conversations: Sequence[Sequence[dict[str, str]]], max_length: int,
                         overflow: Literal["drop", "truncate"] = "drop") -> EncodedSet:
    """Encode many chats; too-long ones are dropped (default) or truncated, and counted either way.

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template.
        conversations: Chats, each ending with an assistant turn.
        max_length: Maximum tokens per record.
        overflow: "drop" skips too-long records; "truncate" cuts them (a record whose prompt alone is too
            long is still dropped).
    """
    if overflow not in ("drop", "truncate"):
        raise ValueError(f"overflow={overflow!r}: use 'drop' or 'truncate'")
    out = EncodedSet()
    for index, messages in enumerate(conversations):
        input_ids, labels = _tokenize(tokenizer, messages)
        try:
            record = _fit(input_ids, labels, max_length, truncate=overflow == "truncate")
        except TooLongError:
            out.dropped += 1
            continue
        out.truncated += int(len(input_ids) > max_length)
        out.records.append(record)
        out.kept_index.append(index)
    return out


class SFTDataset(Dataset):
    """Map-style dataset over encoded records (dicts with ``input_ids`` and ``labels`` of equal length)."""

    def __init__(self, records: Sequence[dict[str, list[int]]]) -> None:
        for i, record in enumerate(records):
            if len(record.get("input_ids", ())) == 0 or len(record["input_ids"]) != len(record.get("labels", ())):
                raise ValueError(f"SFT record {i}: needs non-empty input_ids and labels of the same length; "
                                 "build records with encode_conversation")
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.records[index]

    @property
    def lengths(self) -> list[int]:
        """Token count of every record (what length-grouped batching sorts by)."""
        return [len(record["input_ids"]) for record in self.records]


class SFTCollator:
    """Right-pads a list of records into tensors.

    Output: ``input_ids`` (pad id), ``labels`` (-100 on padding), ``attention_mask`` (1 on real tokens).
    Packed records (with ``position_ids``) also get ``position_ids`` (padding continues as its own run
    0, 1, ...), which lets the model keep attention inside each packed record.

    Args:
        pad_token_id: Token id used for padding (``tokenizer.pad_token_id``, or the eos id).
        pad_to_multiple_of: Round the padded length up to a multiple of this (e.g. 8 on GPUs).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        if pad_token_id is None:
            raise ValueError("SFTCollator: pad_token_id is None; set tokenizer.pad_token (e.g. to the eos token)")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, batch: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(record["input_ids"]) for record in batch)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = all("position_ids" in record for record in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        position_ids = torch.zeros((len(batch), width), dtype=torch.long)
        for row, record in enumerate(batch):
            n = len(record["input_ids"])
            input_ids[row, :n] = torch.tensor(record["input_ids"])
            labels[row, :n] = torch.tensor(record["labels"])
            attention_mask[row, :n] = 1
            if packed:
                position_ids[row, :n] = torch.tensor(record["position_ids"])
                position_ids[row, n:] = torch.arange(width - n)
        out = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        if packed:
            out["position_ids"] = position_ids
        return out


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, cut into mega-batches, sort each by length, then batch.

    Padding stays small while the order stays random across epochs. Deterministic given ``seed`` and the
    epoch (``set_epoch``, which Lightning calls every epoch). For several processes, pass ``num_replicas``
    and ``rank`` (each rank takes every ``num_replicas``-th batch of the same global order) and give the
    Trainer ``use_distributed_sampler=False``.

    Args:
        lengths: Token count of every record.
        batch_size: Records per batch.
        shuffle: Random order (training). False: all records sorted by length, longest first (evaluation).
        seed: Base seed; the epoch is added to it.
        mega_batch_mult: Mega-batch size in batches; larger means less padding but less randomness.
        drop_last: Drop the final incomplete batch.
        num_replicas: Number of processes sharing the batches.
        rank: This process's index in ``[0, num_replicas)``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 mega_batch_mult: int = 50, drop_last: bool = False, num_replicas: int = 1,
                 rank: int = 0) -> None:
        if batch_size < 1 or mega_batch_mult < 1:
            raise ValueError(f"LengthGroupedBatchSampler: batch_size={batch_size} and "
                             f"mega_batch_mult={mega_batch_mult} must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"LengthGroupedBatchSampler: rank={rank} not in [0, num_replicas={num_replicas})")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """This epoch's batches for all ranks together."""
        n = len(self.lengths)
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            order = list(range(n))
            rng.shuffle(order)
            mega = self.batch_size * self.mega_batch_mult
            chunks = [order[i: i + mega] for i in range(0, n, mega)]
        else:
            chunks = [list(range(n))]
        batches = []
        for chunk in chunks:
            chunk = sorted(chunk, key=lambda i: -self.lengths[i])
            batches.extend(chunk[i: i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            rng.shuffle(batches)
        if self.num_replicas > 1:
            batches = batches[: len(batches) - len(batches) % self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.global_batches()[self.rank:: self.num_replicas]

    def __len__(self) -> int:
        n = len(self.lengths)
        if self.shuffle:
            mega = self.batch_size * self.mega_batch_mult
            sizes = [min(mega, n - i) for i in range(0, n, mega)]
        else:
            sizes = [n]
        if self.drop_last:
            total = sum(size // self.batch_size for size in sizes)
        else:
            total = sum(-(-size // self.batch_size) for size in sizes)
        return total // self.num_replicas


def pack_records(records: Sequence[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Concatenate records into rows of at most ``max_length`` tokens (first-fit, longest first).

    Each row gets ``position_ids`` that restart at 0 for every record. Collated by ``SFTCollator`` and fed
    to a Hugging Face model without an attention mask, these restarts make the model mask attention across
    records (transformers builds a block-diagonal causal mask from them), so a packed row computes the
    same per-record logits as the records alone. The first token of every record is never a target.
    """
    rows: list[dict[str, list[int]]] = []
    for i in sorted(range(len(records)), key=lambda i: -len(records[i]["input_ids"])):
        record = records[i]
        n = len(record["input_ids"])
        if n > max_length:
            raise ValueError(f"pack_records: record {i} has {n} tokens > max_length={max_length}; "
                             "encode with the same max_length first")
        row = next((r for r in rows if len(r["input_ids"]) + n <= max_length), None)
        if row is None:
            row = {"input_ids": [], "labels": [], "position_ids": []}
            rows.append(row)
        row["input_ids"].extend(record["input_ids"])
        row["labels"].extend([IGNORE_INDEX, *record["labels"][1:]])
        row["position_ids"].extend(range(n))
    return rows


def split_train_val(items: Sequence[T], val_fraction: float, seed: int = 0,
                    key: Callable[[T], Hashable] | None = None) -> tuple[list[T], list[T]]:
    """Seeded held-out split; with ``key`` (e.g. the question id) whole groups go to one side, so paths of
    one question never land on both sides.

    Args:
        items: Records to split (order is kept within each side).
        val_fraction: Share of groups held out, in [0, 1). 0 gives an empty validation side.
        seed: Seed of the split.
        key: Group of an item; default: every item is its own group.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    groups: dict[Any, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(key(item) if key else index, []).append(index)
    names = list(groups)
    if val_fraction == 0 or len(names) < 2:
        return list(items), []
    random.Random(seed).shuffle(names)
    n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    held = {i for name in names[:n_val] for i in groups[name]}
    train = [item for i, item in enumerate(items) if i not in held]
    val = [item for i, item in enumerate(items) if i in held]
    return train, val
