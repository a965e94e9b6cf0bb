"""The query loss Q(theta) that MAGIC differentiates, built from an lm-eval task's own documents and
prompt format, tokenized exactly as lm-eval's loglikelihood requests; Q = mean over questions.

With `per: task` the score job also differentiates each leaf task's own mean (`QueryLoss.per_task`).

`answer_continuation`: summed cross-entropy of the gold continuation (target_delimiter + gold choice)
after the task's (few-shot) context. `answer_letter`: the recorded runs' query, the cross-entropy
of the single token " L" after "Question: {question}\\nA) {c0}\\n...\\nAnswer:"; docs must expose
`question` (str) and `choices` (list of str); the gold is the task's doc_to_target (index or letter).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from torch import nn

from unlearnspec.errors import UserError
from unlearnspec.magic.replay import forward_logits
from unlearnspec.spec import QuerySpec
from unlearnspec.train.loss import IGNORE_INDEX, token_nll

QueryLossKind = Literal["answer_continuation", "answer_letter"]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed, so few-shot contexts match its evaluation
_SOURCE = "query"


def letter_prompt(question: str, choices: Sequence[str]) -> str:
    """The recorded runs' MCQ prompt; the scored continuation is " " + the gold letter."""
    lines = [f"Question: {question}"] + [f"{LETTERS[i]}) {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer:"


class LMEvalEncoding:
    """Context/continuation tokens as lm-eval 0.4's HFLM builds them for loglikelihood requests.

    Mirrors `TemplateLM.loglikelihood` (empty context -> prefix token), `_encode_pair` (trailing
    context spaces move to the continuation; encode the whole, split at the context's length),
    `HFLM.tok_encode` and the left truncation of `_loglikelihood_tokens`.
    """

    def __init__(self, tokenizer: Any, max_length: int, add_bos_token: Optional[bool] = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.add_bos_token = add_bos_token
        bos = tokenizer.bos_token_id
        self.prefix_token_id: int = bos if bos is not None else tokenizer.eos_token_id

    def tok_encode(self, text: str, add_special_tokens: Optional[bool] = None) -> list[int]:
        kwargs: dict[str, bool] = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            kwargs["add_special_tokens"] = self.add_bos_token
        if add_special_tokens is None and text.startswith(self.tokenizer.decode(self.prefix_token_id)):
            kwargs["add_special_tokens"] = False
        return list(self.tokenizer.encode(text, **kwargs))

    def pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if self.prefix_token_id != cont[0]:
                return [self.prefix_token_id], cont
            return cont[:1], cont[1:]
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx) :]

    def sequence(self, context: str, continuation: str) -> tuple[list[int], int]:
        """Tokens fed to the model plus one (the last continuation token), and the continuation length."""
        ctx, cont = self.pair(context, continuation)
        if not cont:
            raise UserError.one(_SOURCE, f"the continuation {continuation!r} tokenizes to nothing after its context.")
        return (ctx + cont)[-(self.max_length + 1) :], len(cont)


@dataclass(frozen=True)
class QueryBatch:
    """Right-padded query tensors [Q, L]; labels are -100 everywhere except the scored answer tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    task: str
    loss: QueryLossKind
    num_fewshot: int
    doc_keys: tuple[str, ...]
    """`subtask/doc_id` of each question, in row order."""

    @property
    def n_questions(self) -> int:
        return int(self.input_ids.shape[0])

    def info(self) -> dict[str, Any]:
        """The `query` block of scores.json."""
        return {"task": self.task, "loss": self.loss, "n_questions": self.n_questions, "num_fewshot": self.num_fewshot}

    def leaves(self) -> dict[str, list[int]]:
        """Leaf task -> its question rows, in row order (the task is the `subtask` of `subtask/doc_id`)."""
        out: dict[str, list[int]] = {}
        for row, key in enumerate(self.doc_keys):
            out.setdefault(key.rsplit("/", 1)[0], []).append(row)
        return out

    def subset(self, rows: Sequence[int], task: str) -> "QueryBatch":
        """The questions at `rows` as a batch of their own, named `task` (e.g. one leaf task)."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.input_ids.device)
        if index.numel() == 0:
            raise ValueError("a query subset needs at least one question")
        return QueryBatch(
            self.input_ids[index],
            self.attention_mask[index],
            self.labels[index],
            task,
            self.loss,
            self.num_fewshot,
            tuple(self.doc_keys[r] for r in rows),
        )


def load_tasks(
    name: str, include_path: Optional[str | Sequence[str]] = None, include_defaults: Optional[bool] = None
) -> dict[str, Any]:
    """Leaf lm-eval tasks of a task or group name.

    `include_defaults=None` indexes lm-eval's ~15k built-in tasks (6-8 s) only when `name` is not
    found under `include_path`.
    """
    from lm_eval.tasks import TaskManager

    manager = None
    if include_path and include_defaults is not True:
        manager = TaskManager(include_path=include_path, include_defaults=False)
    if manager is None or (include_defaults is None and name not in manager.all_tasks):
        manager = TaskManager(include_path=include_path, include_defaults=True)
    if name not in manager.all_tasks:
        close = difflib.get_close_matches(name, manager.all_tasks, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        known = sorted(manager.all_tasks)
        listing = f" Available: {', '.join(known)}." if len(known) <= 20 else " Add its folder to include_path."
        raise UserError.one(_SOURCE, f"Unknown lm-eval task {name!r}.{hint}{listing}", loc="magic.query.task")
    tasks = manager.load([name])["tasks"]
    if not tasks:
        raise UserError.one(_SOURCE, f"lm-eval task {name!r} has no subtasks.", loc="magic.query.task")
    return dict(tasks)


def _gold_index(task: Any, doc: Mapping[str, Any], choices: Sequence[str], key: str) -> int:
    gold = task.doc_to_target(doc)
    if isinstance(gold, bool) or isinstance(gold, (list, tuple)):
        raise UserError.one(_SOURCE, f"{key}: doc_to_target gave {gold!r}; the query needs exactly one gold answer.")
    if isinstance(gold, int):
        index = gold
    elif isinstance(gold, str) and gold in choices:
        index = list(choices).index(gold)
    elif isinstance(gold, str) and len(gold.strip()) == 1 and gold.strip().upper() in LETTERS:
        index = LETTERS.index(gold.strip().upper())
    else:
        raise UserError.one(_SOURCE, f"{key}: cannot map the gold answer {gold!r} to one of {len(choices)} choices.")
    if not 0 <= index < len(choices):
        raise UserError.one(_SOURCE, f"{key}: gold index {index} is outside the {len(choices)} choices.")
    return index


def continuation_requests(
    task_name: str, task: Any, num_fewshot: int, limit: Optional[int]
) -> list[tuple[str, str, str]]:
    """(key, context, gold continuation) per document, from the task's own loglikelihood requests."""
    output_type = task.get_config("output_type")
    if output_type not in ("multiple_choice", "loglikelihood"):
        raise UserError.one(
            _SOURCE,
            f"task {task_name!r} has output_type {output_type!r}; answer_continuation needs multiple_choice or loglikelihood.",
            loc="magic.query.loss",
        )
    if getattr(task, "multiple_input", 0):
        raise UserError.one(
            _SOURCE, f"task {task_name!r} puts its choices in the context (multiple_input); not supported."
        )
    task.set_config(key="num_fewshot", value=num_fewshot)
    task.set_fewshot_seed(seed=FEWSHOT_SEED)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    by_doc: dict[int, list[Any]] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    out = []
    for doc_id, instances in by_doc.items():
        key = f"{task_name}/{doc_id}"
        if output_type == "loglikelihood":
            chosen = instances[0]
        else:
            choices = task.doc_to_choice(instances[0].doc)
            gold = _gold_index(task, instances[0].doc, choices, key)
            chosen = next(i for i in instances if i.idx == gold)
        context, continuation = chosen.args[0], chosen.args[1]
        out.append((key, context, continuation))
    return out


def letter_requests(task_name: str, task: Any, limit: Optional[int]) -> list[tuple[str, str, str]]:
    """(key, letter prompt, " L") per document; docs need `question` and `choices` fields."""
    out = []
    for doc_id, doc in task.doc_iterator(rank=0, limit=limit, world_size=1):
        key = f"{task_name}/{doc_id}"
        question, choices = doc.get("question"), doc.get("choices")
        has_choices = isinstance(choices, (list, tuple)) and all(isinstance(c, str) for c in choices)
        if not isinstance(question, str) or not has_choices:
            raise UserError.one(
                _SOURCE,
                f"{key}: answer_letter needs docs with a `question` string and a `choices` list of strings "
                f"(found fields: {', '.join(sorted(doc))}). Use loss: answer_continuation for this task.",
                loc="magic.query.loss",
            )
        if not 2 <= len(choices) <= len(LETTERS):
            raise UserError.one(_SOURCE, f"{key}: answer_letter needs 2..26 choices (got {len(choices)}).")
        gold = _gold_index(task, doc, choices, key)
        out.append((key, letter_prompt(question, choices), f" {LETTERS[gold]}"))
    return out


def _pad_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def build_query_batch(
    spec: QuerySpec,
    tokenizer: Any,
    *,
    max_length: int,
    include_path: Optional[str | Sequence[str]] = None,
    add_bos_token: Optional[bool] = None,
) -> QueryBatch:
    """Tokenize the query questions of `spec` (limit applies per leaf task, as in lm-eval)."""
    if spec.loss == "answer_letter" and spec.num_fewshot:
        raise UserError.one(
            _SOURCE,
            "answer_letter is defined zero-shot; set magic.query.num_fewshot: 0.",
            loc="magic.query.num_fewshot",
        )
    encoding = LMEvalEncoding(tokenizer, max_length, add_bos_token)
    rows: list[tuple[str, list[int], int]] = []
    for task_name, task in load_tasks(spec.task, include_path).items():
        if spec.loss == "answer_letter":
            requests = letter_requests(task_name, task, spec.limit)
        else:
            requests = continuation_requests(task_name, task, spec.num_fewshot, spec.limit)
        for key, context, continuation in requests:
            tokens, n_cont = encoding.sequence(context, continuation)
            if spec.loss == "answer_letter" and n_cont != 1:
                raise UserError.one(
                    _SOURCE,
                    f"{key}: the answer letter {continuation!r} is {n_cont} tokens after the prompt; answer_letter needs one.",
                )
            rows.append((key, tokens, n_cont))
    if not rows:
        raise UserError.one(_SOURCE, f"task {spec.task!r} produced no questions.", loc="magic.query.task")
    width = max(len(t) for _, t, _ in rows)
    ids = torch.full((len(rows), width), _pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, (_, tokens, n_cont) in enumerate(rows):
        n = len(tokens)
        ids[r, :n] = torch.tensor(tokens)
        mask[r, :n] = 1
        labels[r, n - n_cont : n] = torch.tensor(tokens[n - n_cont :])
    return QueryBatch(ids, mask, labels, spec.task, spec.loss, spec.num_fewshot, tuple(k for k, _, _ in rows))


class QueryLoss:
    """Q(params) = mean over questions of the summed answer-token cross-entropy, in batches."""

    def __init__(self, model: nn.Module, batch: QueryBatch, batch_size: int = 8):
        self.model = model
        self.batch = batch
        self.batch_size = batch_size

    def _chunks(self) -> Iterator[slice]:
        for start in range(0, self.batch.n_questions, self.batch_size):
            yield slice(start, min(start + self.batch_size, self.batch.n_questions))

    def _chunk_losses(self, params: Mapping[str, torch.Tensor], rows: slice) -> torch.Tensor:
        mask = self.batch.attention_mask[rows]
        width = int(mask.sum(1).max())  # right padding: columns past the longest row are all pad
        device = next(iter(params.values())).device if params else next(self.model.parameters()).device
        ids, mask, labels = (
            x[rows, :width].to(device) for x in (self.batch.input_ids, self.batch.attention_mask, self.batch.labels)
        )
        logits = forward_logits(self.model, params, ids, mask)
        return token_nll(logits, labels).sum(1)

    def question_losses(self, params: Mapping[str, torch.Tensor], rows: Sequence[int]) -> torch.Tensor:
        """l_q of the questions at `rows` (one forward), [len(rows)]; Q = mean over all questions of l_q."""
        return QueryLoss(self.model, self.batch.subset(rows, self.batch.task), len(rows))._chunk_losses(
            params, slice(0, len(rows))
        )

    def per_question(self, params: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        """Summed answer-token cross-entropy of every question, [Q] (= -loglikelihood in lm-eval)."""
        params = params if params is not None else dict(self.model.named_parameters())
        return torch.cat([self._chunk_losses(params, rows) for rows in self._chunks()])

    def part_count(self) -> int:
        """How many parts `parts` deals over the ranks (batches of `batch_size` questions)."""
        return -(-self.batch.n_questions // self.batch_size)

    def parts(self, params: Mapping[str, torch.Tensor], rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
        """Per-batch terms summing to Q, so a gradient can be accumulated batch by batch; with
        `world_size` > 1 only the batches dealt to `rank` (round-robin), whose sums over ranks add up to Q."""
        for i, rows in enumerate(self._chunks()):
            if i % world_size == rank:
                yield self._chunk_losses(params, rows).sum() / self.batch.n_questions

    def __call__(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.per_question(params).mean()

    def per_task(self) -> dict[str, "QueryLoss"]:
        """One QueryLoss per leaf task (mean over that leaf's questions); Q = sum_t n_t/n Q_t."""
        return {
            leaf: QueryLoss(self.model, self.batch.subset(rows, leaf), self.batch_size)
            for leaf, rows in self.batch.leaves().items()
        }


def build_query(
    spec: QuerySpec,
    model: nn.Module,
    tokenizer: Any,
    *,
    include_path: Optional[str | Sequence[str]] = None,
    max_length: Optional[int] = None,
) -> QueryLoss:
    """QueryLoss for `spec` on `model`; max_length defaults to lm-eval's resolution for this model."""
    if max_length is None:
        from lm_eval.models.utils import resolve_max_length

        max_length = resolve_max_length(getattr(model, "config", None), tokenizer, default=2048)
    batch = build_query_batch(spec, tokenizer, max_length=max_length, include_path=include_path)
    return QueryLoss(model, batch, spec.batch_size)
