"""The MAGIC query loss: continuation tokens and losses equal lm-eval's own loglikelihood requests,
padding never counts, the answer-letter format is exact, and misuse is refused with a UserError."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from unlearnspec.errors import UserError
from unlearnspec.magic import query_gradient, replay_mode
from unlearnspec.magic.query import QueryLoss, build_query, build_query_batch, letter_prompt, load_tasks
from unlearnspec.spec import QuerySpec
from unlearnspec.train.loss import IGNORE_INDEX

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "query_task"
GROUP = "fixture_mcq_group"


def _docs() -> list[dict]:
    return [
        json.loads(line)
        for f in sorted(FIXTURES.glob("*.jsonl"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]


@pytest.fixture(scope="module")
def tokenizer():
    """Byte-level BPE trained on the fixture text, so " A".." D" are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for d in _docs():
        texts += [d["question"] + " " + " ".join(d["choices"]), letter_prompt(d["question"], d["choices"]) + " A B C D"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=256,
    )
    return GPTNeoXForCausalLM(config).double()


def _per_question(query: QueryLoss) -> torch.Tensor:
    with replay_mode(query.model), torch.no_grad():
        return query.per_question()


def _lm_eval_gold_loglikelihoods(model, tokenizer, num_fewshot: int, limit: int | None) -> list[float]:
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")
    out = []
    for task in load_tasks(GROUP, str(FIXTURES)).values():
        task.set_config(key="num_fewshot", value=num_fewshot)
        task.set_fewshot_seed(seed=1234)
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        gold = [inst for inst in task.instances if inst.idx == task.doc_to_target(inst.doc)]
        out += [ll for ll, _ in lm.loglikelihood(gold, disable_tqdm=True)]
    return out


@pytest.mark.parametrize("num_fewshot,limit", [(0, None), (1, 3)])
def test_continuation_equals_lm_eval_loglikelihood(model, tokenizer, num_fewshot: int, limit: int | None) -> None:
    spec = QuerySpec(task=GROUP, loss="answer_continuation", num_fewshot=num_fewshot, limit=limit, batch_size=3)
    query = build_query(spec, model, tokenizer, include_path=str(FIXTURES))
    expected = torch.tensor(_lm_eval_gold_loglikelihoods(model, tokenizer, num_fewshot, limit), dtype=torch.float64)
    per_question = _per_question(query)
    assert query.batch.n_questions == (10 if limit is None else 6)
    assert torch.allclose(-per_question, expected, rtol=1e-10, atol=1e-10)
    with replay_mode(model), torch.no_grad():
        assert torch.allclose(query(dict(model.named_parameters())), per_question.mean(), rtol=1e-12)


def test_padding_never_counts(model, tokenizer) -> None:
    spec = QuerySpec(task=GROUP, loss="answer_continuation", batch_size=4)
    batch = build_query_batch(spec, tokenizer, max_length=256, include_path=str(FIXTURES))
    pads = batch.attention_mask == 0
    assert pads.any(), "the fixture must produce padded rows"
    assert torch.all(batch.labels[pads] == IGNORE_INDEX)
    batched = _per_question(QueryLoss(model, batch, batch_size=4))
    alone = _per_question(QueryLoss(model, batch, batch_size=1))  # no row is padded when alone
    assert torch.allclose(batched, alone, rtol=1e-12)
    garbage = batch.input_ids.masked_fill(pads, 7)
    changed = type(batch)(garbage, batch.attention_mask, batch.labels, batch.task, batch.loss, 0, batch.doc_keys)
    assert torch.allclose(_per_question(QueryLoss(model, changed, batch_size=4)), batched, rtol=1e-12)


def test_answer_letter_format_is_exact(model, tokenizer) -> None:
    spec = QuerySpec(task="fixture_mcq_a", loss="answer_letter", batch_size=4)
    batch = build_query_batch(spec, tokenizer, max_length=256, include_path=str(FIXTURES))
    docs = [json.loads(line) for line in (FIXTURES / "fixture_mcq_a.jsonl").read_text().splitlines()]
    assert batch.n_questions == len(docs)
    for row, doc in enumerate(docs):
        ids = batch.input_ids[row][batch.attention_mask[row].bool()].tolist()
        letter = "ABCD"[doc["answer"]]
        expected = (
            f"Question: {doc['question']}\nA) {doc['choices'][0]}\nB) {doc['choices'][1]}\n"
            f"C) {doc['choices'][2]}\nD) {doc['choices'][3]}\nAnswer: {letter}"
        )
        assert tokenizer.decode(ids) == expected
        scored = (batch.labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert scored == [len(ids) - 1]
        assert tokenizer.decode([ids[-1]]) == f" {letter}"
    # Q is the mean cross-entropy of that one token
    query = QueryLoss(model, batch, batch_size=4)
    with replay_mode(model), torch.no_grad():
        manual = []
        for row in range(batch.n_questions):
            n = int(batch.attention_mask[row].sum())
            logits = model(input_ids=batch.input_ids[row : row + 1, :n]).logits[0, n - 2]
            manual.append(-torch.log_softmax(logits, -1)[batch.input_ids[row, n - 1]])
        assert torch.allclose(query(dict(model.named_parameters())), torch.stack(manual).mean(), rtol=1e-10)


def test_batched_gradient_equals_full_gradient(model, tokenizer) -> None:
    spec = QuerySpec(task=GROUP, loss="answer_continuation", batch_size=3)
    query = build_query(spec, model, tokenizer, include_path=str(FIXTURES))
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach() for _, p in model.named_parameters()]
    with replay_mode(model):
        batched = query_gradient(query, names, theta)
        params = [p.clone().requires_grad_() for p in theta]
        full = torch.autograd.grad(query(dict(zip(names, params))), params)
    for a, b in zip(batched, full):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


def test_answer_letter_refuses_docs_without_fields(tokenizer, tmp_path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text(json.dumps({"text": "Sky colour?", "options": ["blue", "red"], "label": 0}) + "\n")
    (tmp_path / "nofields.yaml").write_text(
        "task: fixture_nofields\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"  # absolute: lm-eval resolves relative paths against the cwd
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{text}}"\ndoc_to_choice: "{{options}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n"
    )
    spec = QuerySpec(task="fixture_nofields", loss="answer_letter")
    with pytest.raises(UserError, match="question.*choices"):
        build_query_batch(spec, tokenizer, max_length=256, include_path=str(tmp_path))
    # the same task works as a continuation query
    ok = build_query_batch(QuerySpec(task="fixture_nofields"), tokenizer, max_length=256, include_path=str(tmp_path))
    assert ok.n_questions == 1


def test_unknown_task_and_fewshot_letter_are_refused(tokenizer) -> None:
    with pytest.raises(UserError, match="Did you mean: fixture_mcq_a"):
        load_tasks("fixture_mcq_aa", str(FIXTURES), include_defaults=False)
    spec = QuerySpec(task="fixture_mcq_a", loss="answer_letter", num_fewshot=2)
    with pytest.raises(UserError, match="zero-shot"):
        build_query_batch(spec, tokenizer, max_length=256, include_path=str(FIXTURES))


def test_left_truncation_keeps_the_answer(tokenizer) -> None:
    spec = QuerySpec(task="fixture_mcq_a", loss="answer_continuation")
    full = build_query_batch(spec, tokenizer, max_length=256, include_path=str(FIXTURES))
    short = build_query_batch(spec, tokenizer, max_length=6, include_path=str(FIXTURES))
    assert short.input_ids.shape[1] <= 7
    for row in range(full.n_questions):
        keep = full.labels[row] != IGNORE_INDEX
        keep_short = short.labels[row] != IGNORE_INDEX
        assert full.labels[row][keep].tolist()[-int(keep_short.sum()) :] == short.labels[row][keep_short].tolist()
