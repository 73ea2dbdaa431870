"""CLaMP checkpoints in the authors' published format, with small seeded random weights.

The published files (``torch.save`` in ``code/train_clamp3_symbolic.py`` of sanderwood/clamp3) hold
``{"model": CLaMP3Model.state_dict(), "optimizer": AdamW state, "lr_sched": LambdaLR state,
"epoch", "best_epoch", "min_eval_loss", "modality"}``. The state dict covers the whole model: the
XLM-R text encoder (``text_model.*``), ``text_proj``, the symbolic encoder (``symbolic_model.*``),
``symbolic_proj``, and for CLaMP 3 the audio encoder (``audio_model.*``, ``audio_proj``). CLaMP 2
names the symbolic parts ``music_model`` / ``music_proj`` and has no audio branch. Small stand-ins
for the text and audio tensors are included, so a loader must pick the symbolic part out by name.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from embedders.store.atomic import atomic_path

# A reduced architecture: the published patch size (64) but fewer, narrower layers and short
# segments (16 patches), so that even a scale of eight notes spans two segments.
SMALL = {"hidden_size": 64, "num_layers": 2, "patch_size": 64, "max_patches": 16, "projection_dim": 32}
PUBLISHED_NAME = ("weights_clamp3_c2_h_size_768_t_model_FacebookAI_xlm-roberta-base_t_length_128_a_size_768_"
                  "a_layers_12_a_length_128_s_size_768_s_layers_12_p_size_64_p_length_512.pth")
SYMBOLIC_NAMES = {"clamp3": ("symbolic_model.", "symbolic_proj."), "clamp2": ("music_model.", "music_proj.")}


def random_model(options: dict | None = None, seed: int = 0):
    """A CLaMPSymbolicModel with every parameter drawn from a seeded normal (LayerNorm gains near 1)."""
    from embedders.symbolic.clamp_model import CLaMPSymbolicModel, M3Config

    model = CLaMPSymbolicModel(M3Config(**(options or SMALL)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if name.endswith("LayerNorm.weight") else 0.1 * noise)
    return model.eval()


def _optimizer_and_scheduler_state(seed: int) -> tuple[dict, dict]:
    """Real AdamW and LambdaLR (constant schedule with warm-up, as the authors') states after one step."""
    param = torch.nn.Parameter(torch.randn(3, generator=torch.Generator().manual_seed(seed)))
    opt = torch.optim.AdamW([param], lr=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(min, 1.0))
    param.sum().backward()
    opt.step()
    sched.step()
    return opt.state_dict(), sched.state_dict()


def published_dict(model, variant: str = "clamp3", seed: int = 0) -> dict:
    enc, proj = SYMBOLIC_NAMES[variant]
    state = {}
    for key, value in model.state_dict().items():
        theirs = enc if key.startswith("symbolic_model.") else proj
        key = key.replace("symbolic_model." if theirs == enc else "symbolic_proj.", theirs, 1)
        state[key] = value.detach().clone()
    gen = torch.Generator().manual_seed(seed + 1)
    h = model.config.hidden_size
    state.update({  # stand-ins for the text encoder (and the audio encoder of CLaMP 3)
        "text_model.embeddings.word_embeddings.weight": torch.randn(10, h, generator=gen),
        "text_model.encoder.layer.0.attention.self.query.weight": torch.randn(h, h, generator=gen),
        "text_proj.weight": torch.randn(model.config.projection_dim, h, generator=gen),
        "text_proj.bias": torch.zeros(model.config.projection_dim),
    })
    if variant == "clamp3":
        state.update({
            "audio_model.embeddings.position_embeddings.weight": torch.randn(8, h, generator=gen),
            "audio_model.encoder.layer.0.output.dense.weight": torch.randn(h, 4 * h, generator=gen),
            "audio_proj.weight": torch.randn(model.config.projection_dim, h, generator=gen),
            "audio_proj.bias": torch.zeros(model.config.projection_dim),
        })
    optimizer, lr_sched = _optimizer_and_scheduler_state(seed)
    return {"model": state, "optimizer": optimizer, "lr_sched": lr_sched, "epoch": 100, "best_epoch": 97,
            "min_eval_loss": 1.2345, "modality": "symbolic"}


def write_checkpoint(path, options: dict | None = None, variant: str = "clamp3", seed: int = 0,
                     model=None) -> Path:
    model = model if model is not None else random_model(options, seed)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(published_dict(model, variant, seed), tmp)
    return path


def clamp_contract_config(tmp_path_factory) -> dict:
    """Embedder options for the registry contract test: a small checkpoint in the published format, on
    the CPU (reference numbers are CPU fp32; a GPU would run bf16 under device=auto)."""
    path = write_checkpoint(tmp_path_factory.mktemp("clamp") / PUBLISHED_NAME)
    return {"checkpoint": str(path), "device": "cpu", **SMALL}
