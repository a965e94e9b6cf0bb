"""Issue 11, cross-machine reproducibility: the toy world's CPU numerics pins.

The slow test is the measurement itself, on a GPT-NeoX shaped like the toy model: without pins the
bits of a few AdamW steps depend on the ISA each library dispatches to (simulated machines:
ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS, glibc's libm variants via
GLIBC_TUNABLES); with the pins they do not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnspec.errors import UserError
from unlearnspec.toy.config import NumericsConfig, WorldConfig

REPO = Path(__file__).resolve().parents[1]
PINNED = NumericsConfig(aten_kernels="default", mkl_cbwr="COMPATIBLE", onednn=False, threads=1)
"""The settings that give the same bits on every x86-64 CPU (README: Reproducibility)."""

PROBE = r"""
import hashlib, json, os, sys
sys.path.insert(0, os.environ["REPO"])
from unlearnspec.toy.config import NumericsConfig
PINNED = NumericsConfig(aten_kernels="default", mkl_cbwr="COMPATIBLE", onednn=False, threads=1)
if os.environ.get("PIN"):
    from unlearnspec.toy.numerics import pin_environment
    pin_environment(PINNED)              # what the CLI does before importing torch, for a pinned world
import torch
torch.set_num_threads(1)
if os.environ.get("PIN"):
    from unlearnspec.toy.numerics import apply
    apply(PINNED, "probe")
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
torch.manual_seed(0)
cfg = GPTNeoXConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                    max_position_embeddings=64, rotary_pct=0.25, attn_implementation="eager")
model = GPTNeoXForCausalLM(cfg)
ids = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(1))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
for _ in range(4):
    model(input_ids=ids, labels=ids).loss.backward(); opt.step(); opt.zero_grad()
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
print(json.dumps({"cap": torch.backends.cpu.get_cpu_capability(), "hash": hashlib.sha256(flat.numpy().tobytes()).hexdigest()}))
"""

MACHINES = {  # environment differences that stand for other x86-64 machines
    "native": {},
    "avx2-machine": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F",
    },
    "old-machine": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F",
    },
}


def _probe(machine: dict[str, str], pin: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    env.update(machine, REPO=str(REPO), **({"PIN": "1"} if pin else {}))
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_pins_make_training_bitwise_identical_across_simulated_machines():
    unpinned = {name: _probe(m, pin=False)["hash"] for name, m in MACHINES.items()}
    pinned = {name: _probe(m, pin=True) for name, m in MACHINES.items()}
    # The simulation is real: without pins the machines disagree in the low bits ...
    assert len(set(unpinned.values())) > 1, unpinned
    # ... and with them every machine gets the same bits, on the portable kernels.
    assert len({p["hash"] for p in pinned.values()}) == 1, pinned
    assert {p["cap"] for p in pinned.values()} == {"DEFAULT"}


def test_apply_refuses_when_torch_already_runs_other_kernels(monkeypatch):
    import torch

    from unlearnspec.toy import numerics

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    with pytest.raises(UserError, match="before starting Python"):
        numerics.apply(PINNED, "toy_world.yaml")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("MKL_CBWR", raising=False)
    numerics.apply(NumericsConfig(aten_kernels="native", mkl_cbwr="native", onednn=True, threads=2), "toy_world.yaml")
    assert torch.backends.mkldnn.enabled and torch.get_num_threads() == 2
    numerics.apply(NumericsConfig(aten_kernels="native", mkl_cbwr="native", onednn=True), "toy_world.yaml")
    assert torch.get_num_threads() == 1


def test_numerics_are_part_of_the_world_key_and_shipped_pinned():
    from unlearnspec.toy.build import load_config, world_key

    shipped = load_config(None)
    assert shipped.numerics == PINNED == NumericsConfig()  # portable paths: the default and the shipped world
    native = NumericsConfig(aten_kernels="native", mkl_cbwr="native", onednn=True, threads=1)
    other = WorldConfig.model_validate({**shipped.model_dump(), "numerics": native.model_dump()})
    assert world_key(other) != world_key(shipped)


def test_cli_pins_before_torch_is_imported(tmp_path):
    """`run --profile` and `toy build` set a pinned world's pins before importing torch (fresh process)."""
    import yaml

    from unlearnspec.spec.profile import default_toy_profile

    profile = default_toy_profile()
    shutil.copy(profile, tmp_path / "toy.yaml")
    world = yaml.safe_load((profile.parent / "toy_world.yaml").read_text())
    world["numerics"] = PINNED.model_dump()
    (tmp_path / "toy_world.yaml").write_text(yaml.safe_dump(world))
    code = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from unlearnspec.toy.numerics import pin_for_profile\n"
        f"pin_for_profile({str(tmp_path / 'toy.yaml')!r})\n"
        "assert 'torch' not in sys.modules\n"
        "print(os.environ['ATEN_CPU_CAPABILITY'], os.environ['MKL_CBWR'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["default", "COMPATIBLE"]
