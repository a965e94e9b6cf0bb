"""Load the spec's model and tokenizer (hub, local folder or embedded toy), and wrap LoRA adapters."""

from __future__ import annotations

from typing import Any, Optional

import torch

from unlearnspec import worlds
from unlearnspec.errors import UserError, first_line
from unlearnspec.spec import LoraSpec, ModelSpec
from unlearnspec.spec.assets import Assets

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _offline_error(what: str, name: str, exc: Exception, model: Optional[ModelSpec] = None) -> UserError:
    if model is not None and model.toy is not None:
        fix = worlds.get().damaged_fix
        return UserError.one(name, f"cannot load the cached toy {what} ({first_line(exc)}). {fix}", loc="model.toy")
    return UserError.one(
        name,
        f"cannot load the {what} {name!r} ({first_line(exc)}). "
        "Without hub access, run on the embedded toy world with `--toy`, or set model.name_or_path to a local folder.",
        loc="model",
    )


def load_tokenizer(model: ModelSpec, assets: Assets) -> Any:
    from transformers import AutoTokenizer

    name = assets.tokenizer_location(model)
    try:
        tok = AutoTokenizer.from_pretrained(name, revision=model.revision if not model.tokenizer else None)
    except Exception as exc:  # noqa: BLE001 - offline, missing or damaged files raise many types
        raise _offline_error("tokenizer", name, exc, model if not model.tokenizer else None) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # the recorded runs padded with EOS
    tok.padding_side = "right"
    return tok


def load_model(
    model: ModelSpec, assets: Assets, dropout: float = 0.0, dtype: Optional[torch.dtype] = None, device: str = "cpu"
) -> Any:
    """The base causal LM on `device`, with dropout set from the spec (GPT-NeoX attention/hidden dropout)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    where = assets.model_location(model)
    try:
        config = AutoConfig.from_pretrained(where, revision=model.revision)
    except Exception as exc:  # noqa: BLE001 - offline, missing or damaged files raise many types
        raise _offline_error("model", where, exc, model) from None
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
        ).to(device)  # type: ignore[arg-type]  # transformers' stub of .to
    except Exception as exc:  # noqa: BLE001 - a truncated safetensors raises SafetensorError, not OSError
        raise _offline_error("model", where, exc, model) from None


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
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft scales by alpha / r in float; its stub says int
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def merged_for_eval(model: Any, lora: Optional[LoraSpec], force: bool = False) -> Any:
    """The model to evaluate (or save whole): LoRA adapters merged into the base weights when the spec
    asks (or `force`); a model without adapters is returned as it is."""
    if lora is not None and (lora.merge_for_eval or force) and hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
