"""Train the toy world's byte-level BPE tokenizer and pretrain its tiny GPT-NeoX on the corpus mix.

Deterministic: seeded init and row order, fixed thread count, no dropout. Imports torch and
transformers, so only `unlearnspec.toy.build` loads it, inside the build.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Callable, Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from unlearnspec.toy.config import ModelConfig, WorldConfig
from unlearnspec.toy.world import row_text

EOS = "<|endoftext|>"

Log = Callable[[str], None]


def train_tokenizer(texts: Iterable[str], cfg: ModelConfig) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2/Pythia style: no prefix space, offsets trimmed) with eos = pad."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=cfg.max_seq_len,
    )


def make_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> GPTNeoXForCausalLM:
    """A randomly initialised Pythia-shaped model (untied embeddings, parallel residual, no dropout)."""
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.intermediate,
        max_position_embeddings=cfg.max_seq_len,
        rotary_pct=cfg.rotary_pct,  # type: ignore[call-arg]  # read from **kwargs by transformers 5
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    return GPTNeoXForCausalLM(config)


def encode_rows(rows: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerFast, max_len: int) -> list[list[int]]:
    """Each row's text plus eos, truncated to max_len tokens (no packing: a passage is one row)."""
    ids = tokenizer([row_text(r) for r in rows], add_special_tokens=False)["input_ids"]
    return [(x + [tokenizer.eos_token_id])[:max_len] for x in ids]


class _Mixer:
    """Endless, seeded stream of rows: a corpus drawn by mix weight, then its next row in a
    per-epoch shuffled order, so every row of a corpus is seen before any repeats."""

    def __init__(self, encoded: dict[str, list[list[int]]], weights: dict[str, float], seed: int):
        self.rng = random.Random(seed)
        self.names = [n for n in encoded if weights.get(n, 0.0) > 0]
        self.weights = [weights[n] for n in self.names]
        self.encoded = encoded
        self.order: dict[str, list[int]] = {n: [] for n in self.names}

    def next(self) -> list[int]:
        name = self.rng.choices(self.names, weights=self.weights)[0]
        if not self.order[name]:
            self.order[name] = list(range(len(self.encoded[name])))
            self.rng.shuffle(self.order[name])
        return self.encoded[name][self.order[name].pop()]


def _batch(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def pretrain(
    cfg: WorldConfig,
    corpora: dict[str, list[dict[str, Any]]],
    tokenizer: PreTrainedTokenizerFast,
    log: Log = lambda _msg: None,
) -> GPTNeoXForCausalLM:
    """Pretrain a fresh model on the corpus mix with AdamW, warmup and cosine decay."""
    p = cfg.pretrain
    threads = torch.get_num_threads()
    torch.set_num_threads(p.threads)
    try:
        torch.manual_seed(p.seed)
        model = make_model(cfg.model, tokenizer)
        model.train()
        encoded = {
            n: encode_rows(rows, tokenizer, cfg.model.max_seq_len)
            for n, rows in corpora.items()
            if p.mix.get(n, 0.0) > 0
        }
        mixer = _Mixer(encoded, p.mix, p.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=(0.9, 0.95), weight_decay=p.weight_decay)

        def lr_at(step: int) -> float:
            if step < p.warmup_steps:
                return (step + 1) / p.warmup_steps
            progress = (step - p.warmup_steps) / max(1, p.steps - p.warmup_steps)
            return p.final_lr_fraction + (1 - p.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        start = time.perf_counter()
        running = None
        for step in range(p.steps):
            batch = _batch([mixer.next() for _ in range(p.batch_size)], tokenizer.eos_token_id)
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            if (step + 1) % 50 == 0 or step + 1 == p.steps:
                log(f"pretrain step {step + 1}/{p.steps}  loss {running:.3f}  {time.perf_counter() - start:.0f}s")
        model.eval()
        return model
    finally:
        torch.set_num_threads(threads)
