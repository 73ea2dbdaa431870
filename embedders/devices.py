"""Device and mixed-precision choice for the torch embedders (openl3, clap, clamp)."""

from __future__ import annotations

from embedders.base import ConfigError


def torch_device(embedder: str, requested: str):
    """``auto``: CUDA when visible (a Ray actor with num_gpus), else CPU; an explicit CUDA device
    without CUDA raises ConfigError naming the embedder."""
    import torch

    device = requested if requested != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{embedder}: device {requested!r} requested but CUDA is not available here")
    return torch.device(device)


def cuda_autocast_dtype(embedder: str, precision: str, device):
    """The autocast dtype for ``precision`` (auto | fp32 | bf16 | fp16) on ``device``: None for fp32
    and for auto off CUDA; auto on CUDA is bf16 where supported, else fp16. bf16 / fp16 asked for
    off CUDA raise ConfigError (these models' CPU autocast is slower and less exact than fp32)."""
    import torch

    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise ConfigError(f"{embedder}: precision={precision} is autocast on CUDA only, and this embedder runs on "
                          f"{device}; use precision=fp32 or auto")
    if precision == "auto" and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return None
