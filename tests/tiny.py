"""Tiny GPT-NeoX models and tokenizers built in code (no downloads), shared by the tests."""

from __future__ import annotations

from functools import lru_cache

import torch

WORDS = (
    "the pathogen zorvax spreads through water and the host is a river vole . "
    "a city named kelmar lies north of the sea ; it was founded in 1204 by queen ilsa . "
    "lab technique : culture the strain at low heat then filter twice . "
).split()


@lru_cache(maxsize=None)
def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<unk>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        model_max_length=512,
    )
    fast.name_or_path = "tiny-test-tokenizer"
    return fast


def tiny_model(
    vocab: int | None = None,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn: str = "eager",
):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    vocab = vocab or len(tiny_tokenizer())
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=128,
        rotary_pct=0.25,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(config).to(dtype)


def tiny_texts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(4, 18, (1,), generator=g))
        idx = torch.randint(0, len(WORDS), (k,), generator=g).tolist()
        out.append(" ".join(WORDS[i] for i in idx))
    return out
