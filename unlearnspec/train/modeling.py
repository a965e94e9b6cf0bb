"""Load the spec's model and tokenizer (hub, local folder or embedded toy), and wrap LoRA adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from unlearnspec.errors import UserError
from unlearnspec.spec import LoraSpec, ModelSpec

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _world(toy: Any) -> Any:
    if toy is not None:
        return toy
    from unlearnspec.toy.build import ensure_toy_world

    return ensure_toy_world()


def model_id(model: ModelSpec, toy: Any = None) -> str:
    """A machine-independent name of the model (used in fingerprints and caches); a toy model is
    named by its world's cache key, since the world config determines its weights."""
    if model.toy is not None:
        return f"toy:{model.toy}@{_world(toy).root.name}"
    rev = f"@{model.revision}" if model.revision else ""
    return f"{model.name_or_path}{rev}"


def tokenizer_id(model: ModelSpec, toy: Any = None) -> str:
    return model.tokenizer if model.tokenizer else model_id(model, toy)


def _location(model: ModelSpec, toy: Any = None) -> str:
    if model.toy is not None:
        return str(_world(toy).model_dir)
    assert model.name_or_path is not None
    return model.name_or_path


def _offline_error(what: str, name: str, exc: Exception) -> UserError:
    return UserError.one(
        name,
        f"cannot load the {what} {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
        "Without hub access, run on the embedded toy world with `--toy`, or set model.name_or_path to a local folder.",
        loc="model",
    )


def load_tokenizer(model: ModelSpec, toy: Any = None) -> Any:
    from transformers import AutoTokenizer

    name = model.tokenizer or _location(model, toy)
    try:
        tok = AutoTokenizer.from_pretrained(name, revision=model.revision if not model.tokenizer else None)
    except (OSError, ValueError) as exc:
        raise _offline_error("tokenizer", name, exc) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # the recorded runs padded with EOS
    tok.padding_side = "right"
    return tok


def load_model(model: ModelSpec, dropout: float = 0.0, dtype: Optional[torch.dtype] = None, toy: Any = None,
               device: Optional[torch.device] = None) -> Any:
    """The base causal LM, with dropout set from the spec (GPT-NeoX attention/hidden dropout), on `device`
    when given (the run's resolved device: lm-eval's HFLM evaluates on `model.device`)."""
    loaded = _load_model(model, dropout, dtype, toy)
    return loaded.to(device) if device is not None else loaded


def _load_model(model: ModelSpec, dropout: float, dtype: Optional[torch.dtype], toy: Any) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    where = _location(model, toy)
    try:
        config = AutoConfig.from_pretrained(where, revision=model.revision)
    except (OSError, ValueError) as exc:
        raise _offline_error("model", where, exc) from None
    for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "attn_pdrop", "embd_pdrop", "dropout"):
        if hasattr(config, key):
            setattr(config, key, dropout)
    try:
        return AutoModelForCausalLM.from_pretrained(
            where,
            config=config,
            revision=model.revision,
            dtype=dtype or DTYPES[model.dtype],
            attn_implementation=model.attn_implementation,
        )
    except (OSError, ValueError) as exc:
        raise _offline_error("model", where, exc) from None


def apply_lora(model: Any, lora: LoraSpec) -> Any:
    """Wrap the model with peft LoRA adapters; only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in names]
    if missing:
        raise UserError.one(
            "lora.target_modules",
            f"module name(s) {missing} do not exist in this model; GPT-NeoX uses query_key_value, dense, dense_h_to_4h, dense_4h_to_h.",
        )
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def merged_for_eval(model: Any, lora: Optional[LoraSpec]) -> Any:
    """The model to evaluate: LoRA adapters merged into the base weights when the spec asks."""
    if lora is not None and lora.merge_for_eval and hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def save_pretrained_dir(model: Any, tokenizer: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
