"""Probe classifiers on embeddings: linear and MLP for `average`, attention pooling and BiLSTM for `sequence`.

Every model follows the seed's custom-model interface, ``nn.Module(input_dim, num_classes, **kwargs)``;
``num_classes`` is 1 for regression. Sequence models take ``forward(x, lengths)`` with ``x`` a
zero-padded (B, T, D) batch and ``lengths`` (B,) the true frame counts: padding never reaches the
output (masked softmax, packed LSTM). A custom model is chosen with ``"module:Class"``; when its
``forward`` takes a single argument it gets the padded batch only.
"""

from __future__ import annotations

import importlib
import inspect

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

AVERAGE_PROBES = ("linear", "mlp")
SEQUENCE_PROBES = ("attention", "bilstm")
DEFAULT_PROBE = {"average": "linear", "sequence": "attention"}


class ModelSpecError(ValueError):
    """--model names no probe and no importable module:Class."""


class LinearProbe(nn.Module):
    def __init__(self, input_dim: int, num_classes: int, dropout: float = 0.0, **_ignored):
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(input_dim, num_classes))

    def forward(self, x):                       # (B, D) -> (B, C)
        return self.net(x)


class MLPProbe(nn.Module):
    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 256, dropout: float = 0.1, **_ignored):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, x):                       # (B, D) -> (B, C)
        return self.net(x)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class AttentionPoolProbe(nn.Module):
    """Learned attention over frames (masked softmax), then an MLP head."""

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 256, dropout: float = 0.1, **_ignored):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden_dim, 1)
        self.head = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes))

    def forward(self, x, lengths):              # x (B, T, D), lengths (B,) -> (B, C)
        h = self.proj(x)                                           # (B, T, H)
        scores = self.score(h).squeeze(-1)                         # (B, T)
        scores = scores.masked_fill(~length_mask(lengths, x.shape[1]), float("-inf"))
        weights = torch.softmax(scores, dim=1).unsqueeze(-1)       # (B, T, 1), zero on padding
        return self.head((weights * h).sum(dim=1))                 # (B, H) -> (B, C)


class BiLSTMProbe(nn.Module):
    """Bidirectional LSTM over the real frames (packed), final states of both directions -> head."""

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 128, dropout: float = 0.1,
                 num_layers: int = 1, **_ignored):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden_dim, num_layers=num_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden_dim, num_classes))

    def forward(self, x, lengths):              # x (B, T, D), lengths (B,) -> (B, C)
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)                            # h_n (layers*2, B, H)
        return self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))     # (B, 2H) -> (B, C)


PROBES: dict[str, type[nn.Module]] = {
    "linear": LinearProbe, "mlp": MLPProbe, "attention": AttentionPoolProbe, "bilstm": BiLSTMProbe,
}


def resolve_spec(spec: str, embedding_type: str) -> str:
    """'auto' -> the default probe of the embedding type; a probe for the other type is refused."""
    if spec in (None, "", "auto"):
        return DEFAULT_PROBE[embedding_type]
    wanted = AVERAGE_PROBES if embedding_type == "average" else SEQUENCE_PROBES
    if spec in PROBES and spec not in wanted:
        raise ModelSpecError(f"--model {spec} is a probe for the other embedding type; "
                             f"with --embedding_type {embedding_type} choose one of {list(wanted)} or module:Class")
    return spec


def model_class(spec: str) -> type[nn.Module]:
    if spec in PROBES:
        return PROBES[spec]
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ModelSpecError(f"--model {spec!r}: expected one of {sorted(PROBES)} or 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ModelSpecError(f"--model {spec!r}: cannot import {class_name} from {module_name} ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelSpecError(f"--model {spec!r} is not a torch.nn.Module subclass")
    return cls


def build_model(spec: str, input_dim: int, num_classes: int, **kwargs) -> nn.Module:
    """A probe by name or a custom ``module:Class`` built as ``Class(input_dim, num_classes, **kwargs)``."""
    cls = model_class(spec)
    if cls not in PROBES.values():   # custom models get only the keyword arguments they accept
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        try:
            return cls(input_dim, num_classes, **kwargs)
        except TypeError as exc:   # the seed's interface is Class(input_dim, num_classes, **kwargs)
            raise ModelSpecError(f"--model {spec!r}: {cls.__name__}(input_dim={input_dim}, num_classes={num_classes}, "
                                 f"**{kwargs}) failed ({exc}); a custom model takes (input_dim, num_classes, **kwargs)"
                                 ) from exc
    return cls(input_dim, num_classes, **kwargs)


def takes_lengths(model: nn.Module) -> bool:
    """Whether ``forward`` accepts the (B,) lengths beside the padded batch."""
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(params) >= 2
