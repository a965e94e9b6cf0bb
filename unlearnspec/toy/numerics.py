"""Pin the CPU numerics of toy-world computations (see toy.config.NumericsConfig and the README).

ATen reads ATEN_CPU_CAPABILITY at torch's first operation in a process and MKL reads MKL_CBWR at
its first call, so `pin_environment` must run before any tensor work: the CLI calls it before
importing torch, and the test conftest before collecting tests. `apply` (called by
ensure_toy_world) pins again, switches oneDNN off and checks that the pins hold in this process.
Imports torch only inside `apply`/`active`.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from unlearnspec.errors import UserError

ENV_ATEN = "ATEN_CPU_CAPABILITY"
ENV_MKL = "MKL_CBWR"


def pin_environment(numerics: Any) -> None:
    """Set the environment pins of a NumericsConfig (no effect on a torch that already ran kernels)."""
    if numerics.aten_kernels != "native":
        os.environ[ENV_ATEN] = numerics.aten_kernels
    if numerics.mkl_cbwr != "native":
        os.environ[ENV_MKL] = numerics.mkl_cbwr


def pin_for_world(config_path: Optional[os.PathLike] = None) -> None:
    """Pin the environment for the toy world of `config_path` (default world); a broken world file
    is left for the command itself to report."""
    from pathlib import Path

    from unlearnspec.toy.config import load_world_config

    path = (
        Path(config_path)
        if config_path is not None
        else Path(__file__).resolve().parents[1] / "profiles" / "toy_world.yaml"
    )
    try:
        pin_environment(load_world_config(path).numerics)
    except UserError:
        pass


def pin_for_profile(profile_path: Optional[os.PathLike]) -> None:
    """Pin the environment for the toy world a mapping profile runs on (none: nothing to pin)."""
    if profile_path is None:
        return
    from pathlib import Path

    from unlearnspec.spec.profile import Profile, load_profile

    try:
        profile = load_profile(Path(profile_path))
    except UserError:
        return
    if isinstance(profile, Profile):
        pin_for_world(Path(profile_path).parent / profile.world if profile.world else None)


def active() -> dict[str, str]:
    """The CPU numerics this process actually uses (recorded with the world and in provenance)."""
    import torch

    return {
        "aten_kernels": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get(ENV_MKL, "native"),
        "onednn": "on" if torch.backends.mkldnn.enabled else "off",
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
    }


def apply(numerics: Any, where: str) -> dict[str, str]:
    """Pin (if still possible), set oneDNN, and refuse to go on when torch already runs other
    kernels: the numbers would then differ from every other machine's without anyone noticing."""
    pin_environment(numerics)
    import torch

    torch.backends.mkldnn.enabled = bool(numerics.onednn)  # type: ignore[assignment]  # a module property in torch
    if numerics.threads is not None:
        torch.set_num_threads(numerics.threads)
    now = active()
    if numerics.aten_kernels != "native" and now["aten_kernels"].lower() != numerics.aten_kernels:
        raise UserError.one(
            where,
            f"the toy world pins ATen kernels to `{numerics.aten_kernels}` but this process already runs "
            f"`{now['aten_kernels']}` kernels (torch did work before the pin could apply). Run through the "
            f"`unlearnspec` command, or set {ENV_ATEN}={numerics.aten_kernels} {ENV_MKL}={numerics.mkl_cbwr} "
            "before starting Python, or set `numerics.aten_kernels: native` in the world file.",
            loc="numerics.aten_kernels",
        )
    return now
