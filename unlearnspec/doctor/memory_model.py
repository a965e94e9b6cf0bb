"""Memory model: bytes per GPU of a job's training, MAGIC reverse pass and evaluation (DDP or FSDP), for `doctor`
and `show --cluster`. Imports no torch.

Activations are the per-sequence fits of benchmarks/memory_model.py (every tensor autograd saves, fp32; scaled
by the dtype's size). The reverse pass's parameter-sized tensors were counted with tracked allocations
(`magic.memtrack.LiveBytes`, tests/workers/magic_fsdp_memory.py, 8-layer d=64 GPT-NeoX, float32): besides the
states it holds on the device, a pass keeps C0 + K x C1 parameter-sized copies (K batched adjoints), the
optimizer's arithmetic temporaries included. Under FSDP every one of them is 1/W per GPU; the parameters of
the largest module are whole for a moment (all-gathered for its forward, again in each backward, and its
gradient before the reduce-scatter: 3 copies). Evaluation holds the whole model plus the logits of a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

GIB = 2**30

REVERSE_COPIES = {"sgd": (1.33, 3.72), "adam": (7.75, 10.50)}
"""(C0, C1) in parameter-sized copies, fitted to tracked peaks of two model shapes in float32 (tests/test_memory_model.py
checks the model on others)."""
BATCHED_ACTIVATIONS = 0.48
"""One process vmaps the double backward of K batched adjoints: its activations grow by this x (K - 1) (same fit).
The sharded pass runs the K backwards one by one (no growth)."""
STATE_TENSORS = {"sgd": 1, "adam": 3}
"""Parameter-sized tensors per kept state: theta (SGD); theta, m, v (Adam/AdamW)."""


@dataclass(frozen=True)
class ModelShape:
    """A GPT-NeoX-like decoder: what the memory model needs to know of it."""

    layers: int
    hidden: int
    heads: int
    vocab: int
    intermediate: int
    tied: bool = False

    @property
    def params(self) -> int:
        d, i = self.hidden, self.intermediate
        layer = 4 * d * d + 4 * d + 2 * d * i + i + d + 4 * d  # qkv + dense, fc_in + fc_out, two LayerNorms
        return self.layers * layer + self.vocab * d * (1 if self.tied else 2) + 2 * d

    @property
    def largest_module(self) -> int:
        """Parameters of the largest module FSDP gathers at once (here: one linear or embedding)."""
        return max(self.vocab * self.hidden, self.hidden * self.intermediate, 3 * self.hidden * self.hidden)

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape":
        """From a transformers config.json (GPT-NeoX / Pythia keys)."""
        d = int(config["hidden_size"])
        return cls(
            int(config["num_hidden_layers"]),
            d,
            int(config["num_attention_heads"]),
            int(config["vocab_size"]),
            int(config.get("intermediate_size") or 4 * d),
            bool(config.get("tie_word_embeddings", False)),
        )


def train_activations(m: ModelShape, seq: int, dtype_bytes: int) -> float:
    """Bytes autograd saves per sequence for the training backward."""
    L, d, h, V, S = m.layers, m.hidden, m.heads, m.vocab, seq
    return (L * S * (68 * d + 4 * h * S) + 3.9 * S * V + 9 * S * d) * dtype_bytes / 4


def double_activations(m: ModelShape, seq: int, dtype_bytes: int) -> float:
    """Bytes the reverse pass keeps per sequence for its double backward (forward plus create_graph backward)."""
    L, d, h, V, S = m.layers, m.hidden, m.heads, m.vocab, seq
    return (L * S * (128 * d + 12 * h * S) + 11.8 * S * V + 13.5 * S * d) * dtype_bytes / 4


@dataclass(frozen=True)
class Setting:
    """How one job runs: what the knobs of the spec and the site file say."""

    world: int = 1
    """Processes (one GPU each)."""
    fsdp: bool = False
    rows: int = 1
    """Rows per (double) backward on one GPU."""
    optimizer: str = "sgd"
    """sgd | adam | adamw."""
    schedule: str = "sqrt"
    steps: int = 1
    offload_states: bool = False
    questions: int = 1
    """K, batched adjoints per reverse pass (`question_chunk` under `per: question`, else 1)."""
    dtype_bytes: int = 4


def _opt(name: str) -> str:
    return "sgd" if name == "sgd" else "adam"


def device_states(s: Setting) -> int:
    """States the reverse pass holds on the device at once: a recomputed `sqrt` segment (one with
    offload_states), one loaded `all` state, the `log` recursion's spine."""
    if s.schedule == "log":
        return 1 + math.ceil(math.log2(max(s.steps // 2, 2)))
    if s.schedule == "all" or s.offload_states:
        return 1
    return math.ceil(math.sqrt(s.steps))


def reverse_bytes(m: ModelShape, seq: int, s: Setting) -> float:
    """Peak bytes per GPU of the MAGIC reverse pass."""
    copy = m.params * s.dtype_bytes
    c0, c1 = REVERSE_COPIES[_opt(s.optimizer)]
    copies = STATE_TENSORS[_opt(s.optimizer)] * device_states(s) + c0 + s.questions * c1
    held = copies * copy / s.world if s.fsdp else copies * copy
    sharded = s.fsdp and s.world > 1
    gathered = 3 * m.largest_module * s.dtype_bytes if sharded else 0
    growth = 1 + (0 if s.fsdp else BATCHED_ACTIVATIONS * (s.questions - 1))
    return held + gathered + growth * s.rows * double_activations(m, seq, s.dtype_bytes)


def train_bytes(m: ModelShape, seq: int, s: Setting, with_params: bool = True) -> float:
    """Peak bytes per GPU of training: parameters, gradients and optimizer state (sharded under FSDP, with two
    modules gathered at once; DDP keeps a gradient bucket copy as well), plus the activations of one micro-batch.
    `with_params=False` leaves out the parameters themselves (what a tracked measurement of training sees)."""
    copy = m.params * s.dtype_bytes
    tensors = int(with_params) + 1 + (2 if _opt(s.optimizer) == "adam" else 0)  # (parameters,) gradients (+ m, v)
    if s.fsdp and s.world > 1:
        held = tensors * copy / s.world + 2 * m.largest_module * s.dtype_bytes
    else:
        held = (tensors + (1 if s.world > 1 else 0)) * copy
    return held + s.rows * train_activations(m, seq, s.dtype_bytes)


def kept_count(schedule: str, steps: int) -> int:
    """States a trajectory keeps (`magic.trajectory.kept_steps`, plus theta_T), without importing torch."""
    if schedule == "all":
        return steps + 1
    if schedule == "sqrt":
        return math.ceil(steps / math.ceil(math.sqrt(steps))) + 1
    kept, lo = 1, 0
    while steps - lo > 1:
        lo = (lo + steps) // 2
        kept += 1
    return kept + 1


def host_bytes(m: ModelShape, s: Setting, kept: int, ram_store: bool) -> float:
    """Host RAM of a score job over all its ranks: each rank loads the whole model before FSDP shards it; then the
    kept states of a `ram` store and the `sqrt` segment `offload_states` keeps in RAM (whole on each DDP rank,
    1/W per rank under FSDP)."""
    copy = m.params * s.dtype_bytes * STATE_TENSORS[_opt(s.optimizer)]
    ranks = 1 if s.fsdp and s.world > 1 else s.world
    states = (kept if ram_store else 0) + (
        math.ceil(math.sqrt(s.steps)) if s.offload_states and s.schedule != "log" else 0
    )
    return max(s.world * m.params * s.dtype_bytes, states * copy * ranks)


def resident_bytes(m: ModelShape, s: Setting) -> float:
    """What a score job keeps on each GPU beside its reverse pass: the trained model's parameters and the
    optimizer's m and v (Adam/AdamW), 1/W of them under FSDP."""
    copies = 1 + (2 if _opt(s.optimizer) == "adam" else 0)
    return copies * m.params * s.dtype_bytes / (s.world if s.fsdp and s.world > 1 else 1)


def attack_bytes(m: ModelShape, seq: int, rows: int, optimizer: str, lora: bool, dtype_bytes: int) -> float:
    """Peak bytes of the relearning attack on the main GPU, beside the evaluated point's model it copies: full
    fine-tuning on one process (parameters, gradients, optimizer state), or LoRA (frozen weights; adapter-sized
    state neglected), plus the activations of one micro-batch of `rows` sequences."""
    copy = m.params * dtype_bytes
    held = copy + (copy if lora else train_bytes(m, seq, Setting(optimizer=optimizer, rows=0, dtype_bytes=dtype_bytes)))
    return held + rows * train_activations(m, seq, dtype_bytes)


def eval_bytes(m: ModelShape, seq: int, batch: int, dtype_bytes: int) -> float:
    """Peak bytes of an in-process lm-eval pass on one GPU: the whole model and a batch's logits (float32,
    twice: the log-softmax beside them)."""
    return m.params * dtype_bytes + batch * seq * m.vocab * 4 * 2


def gib(n: float) -> float:
    return n / GIB


HEADROOM = 0.9
"""Share of a GPU's memory a job may plan to use: the rest is for the CUDA context, allocator fragmentation and
kernels' workspaces."""


def fits(nbytes: float, gpu_gb: Optional[float]) -> bool:
    """Whether `nbytes` fits a GPU of `gpu_gb` GB, SLURM's GB (2^30 bytes, what nvidia-smi shows / 1024: 80 for an
    80 GB A100/H100), with `HEADROOM`."""
    return gpu_gb is None or nbytes <= HEADROOM * gpu_gb * GIB
