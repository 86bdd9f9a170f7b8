"""How a rank computes: autocast precision, TF32 and `torch.compile`, chosen from the config and the device.

One pure function (`choose_acceleration`) decides, so the choices are unit-tested on any machine; `apply` then
sets the process-wide flags. On a CPU every default is off (fp32, eager), so a CPU run is bitwise reproducible and
its resume exact; on CUDA the defaults are bf16 autocast, TF32 matmuls and a compiled model (nanoGPT's GPU recipe).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import ConfigError, TrainConfig


@dataclass(frozen=True, kw_only=True, slots=True)
class Acceleration:
    autocast_dtype: torch.dtype | None
    """dtype of the autocast region around forward passes; None = no autocast (fp32)."""
    tf32: bool
    """Allow TF32 in CUDA matmuls and convolutions."""
    compile: bool
    """Wrap the model in `torch.compile`."""

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)


def choose_acceleration(
    config: TrainConfig, device: torch.device, *, bf16_supported: bool | None = None
) -> Acceleration:
    """`train.precision` and `train.compile` made concrete for `device`.

    `bf16_supported` is whether this GPU computes in bf16 (Ampere or newer); None asks torch.
    """
    cuda = device.type == "cuda"
    if cuda and bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if config.precision == "bf16" and cuda and not bf16_supported:
        raise ConfigError(
            "train.precision='bf16': this GPU has no bf16 support (needs compute capability 8.0 or newer); "
            "use train.precision=fp32 or auto"
        )
    if config.precision == "auto":
        dtype = torch.bfloat16 if cuda and bf16_supported else None
    else:
        dtype = torch.bfloat16 if config.precision == "bf16" else None
    compile_model = cuda if config.compile == "auto" else config.compile == "on"
    return Acceleration(autocast_dtype=dtype, tf32=cuda and config.precision != "fp32", compile=compile_model)


def apply(accel: Acceleration) -> None:
    """Set the process-wide flags of `accel` (before the model is built)."""
    if accel.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
