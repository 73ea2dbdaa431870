"""OpenL3 weight files in torchopenl3's published format, with seeded random weights.

torchopenl3 loads ``<WEIGHTS_URL>torchopenl3_<input_repr>_<content_type>_<embedding_size>.pth.tar``
with ``torch.hub.load_state_dict_from_url`` straight into ``PytorchOpenl3.load_state_dict`` (strict),
so a published file is ``torch.save(PytorchOpenl3(...).state_dict())``: a flat dict, no prefix or
nesting, holding the conv / batch-norm tensors (with ``num_batches_tracked``) and the spectrogram
front end's buffers ``speclayer.dft_real_kernels``, ``speclayer.dft_imag_kernels`` and, for the mel
inputs, ``speclayer.mel_basis``. The hub cache keeps it under that file name in
``torch.hub.get_dir()/checkpoints``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from embedders.store.atomic import atomic_path

# The contract test's options: mel128 runs the same network on half the spectrogram rows of
# mel256 (the default), so it is the cheapest real configuration.
CONTRACT_OPTIONS = {"input_repr": "mel128", "content_type": "music", "embedding_size": 512}


def file_name(input_repr: str = "mel256", content_type: str = "music", embedding_size: int = 512) -> str:
    return f"torchopenl3_{input_repr}_{content_type}_{embedding_size}.pth.tar"


def random_model(input_repr: str = "mel256", content_type: str = "music", embedding_size: int = 512, seed: int = 0):
    """torchopenl3's network with seeded random weights at realistic scales (He-initialised convs,
    batch-norm statistics near those of trained layers; the first one normalises dB input)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message="Empty filters detected", category=UserWarning)
        from torchopenl3.models import PytorchOpenl3

        model = PytorchOpenl3(content_type=content_type, input_repr=input_repr, embedding_size=embedding_size)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_children():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                module.bias.copy_(0.01 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                first = name == "batch_normalization_1"  # its input is dB in [-80, 0]
                module.running_mean.copy_(torch.full((n,), -40.0) if first else 0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(torch.full((n,), 400.0) if first else 0.5 + torch.rand(n, generator=gen))
                module.num_batches_tracked.fill_(1000)
    return model.eval()


def write_weights(directory, input_repr: str = "mel256", content_type: str = "music", embedding_size: int = 512,
                  seed: int = 0, name: str | None = None) -> Path:
    """Save a random model's state dict as torchopenl3 publishes it; returns the file's path."""
    model = random_model(input_repr, content_type, embedding_size, seed)
    path = Path(directory) / (name or file_name(input_repr, content_type, embedding_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return path


def write_hub_cache(torch_home, **kwargs) -> Path:
    """The file where torchopenl3's first use would have left it, under ``TORCH_HOME=torch_home``."""
    return write_weights(Path(torch_home) / "hub" / "checkpoints", **kwargs)


def openl3_contract_config(tmp_path_factory) -> dict:
    """Embedder options for the registry contract test: random weights in the published format, on the
    CPU (fp32; a GPU would run bf16 under device=auto)."""
    path = write_weights(tmp_path_factory.mktemp("openl3"), **CONTRACT_OPTIONS)
    return {"checkpoint": str(path), "device": "cpu", **CONTRACT_OPTIONS}
