"""Row selection, the token grid, its fingerprint, chat formatting and offline loading errors."""

from __future__ import annotations

import json

import pytest
import torch

from unlearnspec.data import build_grid, chat_text, load_grid, load_texts, select_rows
from unlearnspec.errors import UserError
from unlearnspec.spec import ChatSpec, DataSpec, SelectSpec
from unlearnspec.train.loss import IGNORE_INDEX

from .tiny import tiny_texts, tiny_tokenizer


def test_select_rows_filter_sort_offset_fraction():
    texts = ["x" * n for n in (5, 300, 150, 120, 101, 100, 200, 250)]
    sel = SelectSpec(count=2, min_chars=100, order="length", offset_fraction=0.25)
    # kept (len > 100): 300,150,120,101,200,250 -> sorted 101,120,150,200,250,300 -> start int(6*0.25)=1
    assert [len(texts[i]) for i in select_rows(texts, sel)] == [120, 150]
    assert select_rows(texts, SelectSpec(count=3, min_chars=100)) == [1, 2, 3]
    assert select_rows(texts, SelectSpec(count=2, offset=6)) == [6, 7]


def test_select_rows_shuffle_is_seeded_and_count_checked():
    texts = [f"row {i}" for i in range(50)]
    a = select_rows(texts, SelectSpec(count=10, order="shuffle", shuffle_seed=3))
    assert a == select_rows(texts, SelectSpec(count=10, order="shuffle", shuffle_seed=3))
    assert a != select_rows(texts, SelectSpec(count=10, order="shuffle", shuffle_seed=4))
    with pytest.raises(UserError, match="only 50 rows remain"):
        select_rows(texts, SelectSpec(count=60))


def test_chat_formats():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert chat_text(msgs, ChatSpec(format="join_contents")) == "hi\nhello"
    # no chat template on the tokenizer: the documented "role: content" fallback
    assert chat_text(msgs, ChatSpec(format="chat_template"), tiny_tokenizer()) == "user: hi\nassistant: hello"


def test_grid_padding_labels_truncation_and_eos():
    tok = tiny_tokenizer()
    texts = ["the pathogen", "the pathogen zorvax spreads through water and the host is a river vole"]
    grid = build_grid(texts, tok, 12, "tiny")
    assert grid.input_ids.shape == (2, 12)
    n0 = len(tok(texts[0])["input_ids"])
    assert grid.attention_mask[0].sum() == n0 and grid.attention_mask[1].sum() == 12
    assert (grid.labels[0, n0:] == IGNORE_INDEX).all() and (grid.input_ids[0, n0:] == tok.pad_token_id).all()
    assert torch.equal(grid.labels[1], grid.input_ids[1])
    assert not grid.valid_targets[:, 0].any()
    eos = build_grid(texts, tok, 64, "tiny", append_eos=True)
    assert eos.input_ids[0, n0] == tok.eos_token_id and eos.labels[0, n0] == tok.eos_token_id


def test_fingerprint_is_stable_and_sensitive():
    tok = tiny_tokenizer()
    texts = tiny_texts(6)
    a = build_grid(texts, tok, 16, "tiny").fingerprint
    assert a == build_grid(list(texts), tok, 16, "tiny").fingerprint
    assert a != build_grid(texts, tok, 17, "tiny").fingerprint
    assert a != build_grid(texts, tok, 16, "other-tokenizer").fingerprint
    assert a != build_grid(texts[::-1], tok, 16, "tiny").fingerprint
    # pinned: the same tokens give the same fingerprint on every machine (explicit little-endian bytes)
    from unlearnspec.data import grid_fingerprint

    pinned = grid_fingerprint(torch.tensor([[1, 2, 3, 0]]), torch.tensor([[1, 1, 1, 0]]), "pinned")
    assert pinned == "fac7b56e8d732bae5e64f2e3b9f724dae73b34c81a542c90bf8c64a15e178538"


def test_load_local_jsonl_files_and_chat(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"text": t} for t in tiny_texts(30)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = DataSpec.model_validate(
        {"files": {"paths": ["train.jsonl"]}, "select": {"count": 5, "min_chars": 10}, "max_seq_len": 16}
    )
    texts, idx = load_texts(data, tmp_path / "spec.yaml")
    expected = [i for i, r in enumerate(rows) if len(r["text"].strip()) > 10][:5]
    assert idx == expected and texts == [rows[i]["text"] for i in expected]
    grid = load_grid(data, tmp_path / "spec.yaml", tiny_tokenizer(), "tiny")
    assert grid.input_ids.shape == (5, 16) and grid.source_rows == tuple(expected)

    chats = [
        {"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}]} for t in tiny_texts(8)
    ]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in chats))
    chat = DataSpec.model_validate(
        {"files": {"paths": ["chat.jsonl"]}, "chat": {}, "select": {"count": 3}, "max_seq_len": 16}
    )
    texts, _ = load_texts(chat, tmp_path / "spec.yaml")
    assert texts[0] == chats[0]["messages"][0]["content"] + "\nok"


def test_missing_column_and_files_are_clean_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text(json.dumps({"body": "x" * 50}))
    data = DataSpec.model_validate({"files": {"paths": ["train.jsonl"]}, "select": {"count": 1}, "max_seq_len": 8})
    with pytest.raises(UserError, match="no column 'text'"):
        load_texts(data, tmp_path / "spec.yaml")
    gone = DataSpec.model_validate({"files": {"paths": ["nope.jsonl"]}, "select": {"count": 1}, "max_seq_len": 8})
    with pytest.raises(UserError, match="not found"):
        load_texts(gone, tmp_path / "spec.yaml")


def test_hub_dataset_offline_suggests_toy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data = DataSpec.model_validate(
        {"hub": {"path": "Salesforce/wikitext", "name": "wikitext-103-v1"}, "select": {"count": 1}, "max_seq_len": 8}
    )
    with pytest.raises(UserError) as info:
        load_texts(data, tmp_path / "spec.yaml")
    msg = str(info.value)
    assert "Salesforce/wikitext" in msg and "--toy" in msg
