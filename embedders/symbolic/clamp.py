"""``clamp``: CLaMP 3's symbolic music encoder (M3) as a symbolic embedder; CLaMP 2 checkpoints load too.

Pipeline, as the authors' ``preprocessing/midi/batch_midi2mtf.py --m3_compatible`` and
``code/extract_clamp3.py --get_global`` do it (github.com/sanderwood/clamp3; re-implemented here):

1. MIDI -> MTF ("MIDI text format") with mido: a first line ``ticks_per_beat N``, then one line per
   message of ``MidiFile.merged_track`` (all tracks merged in playback order, delta times, one
   ``end_of_track`` at the end): the values of ``msg.dict()`` in order, space separated, escaped with
   ``unicode_escape`` (so the text is ASCII), e.g. ``note_on 0 0 60 80`` (type, time, channel, note,
   velocity) or ``set_tempo 500000 0`` (meta: type, attributes, time). The meta messages text,
   copyright, track_name, instrument_name, lyrics, marker, cue_marker and device_name are dropped
   (CLaMP 2's converter also drops sequencer_specific and sysex).
2. MTF -> patches: consecutive lines of the same message type are joined into one patch (the type
   once, then each line's values separated by tabs) while the patch stays within ``patch_size - 2``
   characters; each patch becomes ``[1] + [ord(c) ...] + [2]`` cut to ``patch_size`` and padded with
   0. A bos patch ``[1] * P`` and an eos patch ``[1] + [2] * (P - 1)`` wrap the piece.
3. Segments of ``max_patches`` (512) patches: ``[0:512], [512:1024], ...`` with the last one
   replaced by the final 512 patches (it overlaps its predecessor). Each segment -> encoder ->
   masked mean -> projection = one D-dim vector. The authors' global vector is the average of
   these weighted by the number of new patches each contributes (512, ..., n % 512).

Output: ``sequence`` = the per-segment vectors, (T = ceil(n_patches / 512), D = projection_dim);
frames are segments, not a time grid (``hop_seconds = None``). ``average`` (what the store keeps as
the recording's vector, ``embed_items(..., with_average=True)``) is the authors' global vector:
the segments weighted by the new patches each contributes, not their plain mean (which differs
once T > 1: up to 2.4% relative L2 on 5-segment files). ``embed_global`` returns it for raw items.

Stages: ``prepare`` (CPU: MIDI -> MTF -> patches, an (n_patches, patch_size) int64 array) and
``forward`` (segments of every item batched, longest first, on the device). Device, precision,
model cache and hashing: embedders/torch_embedder.py.

Input: the pipeline hands a ``symusic.Score``; it is written back to MIDI bytes with symusic and
parsed by mido. That round trip is not byte-identical to the original file: symusic writes note
ends as ``note_off`` carrying the note's velocity (many files use ``note_on`` velocity 0, which
gives different lines and, since note_on/note_off lines then alternate, more patches: a median of
235 instead of 54 patches on music21 files), reorders meta events (time_signature, key_signature,
set_tempo first), may write a program_change for a track it creates, and drops what it does not
model (sysex, sequencer-specific). Ticks per beat and all timing are kept. Raw Standard MIDI File
bytes are also accepted as items and take the authors' exact path.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from embedders.base import ConfigError, EmbedderConfig, EmptyInputError, MidiDecodeError, MissingDependencyError
from embedders.registry import register
from embedders.torch_embedder import TorchEmbedder, TorchEmbedderConfig, memo

PAD, BOS, EOS = 0, 1, 2
HOW_TO_GET = (
    "download a CLaMP 3 checkpoint from https://huggingface.co/sander-wood/clamp3 (for MIDI the authors "
    "recommend weights_clamp3_c2_h_size_768_t_model_FacebookAI_xlm-roberta-base_t_length_128_a_size_768_"
    "a_layers_12_a_length_128_s_size_768_s_layers_12_p_size_64_p_length_512.pth; the audio-oriented "
    "weights_clamp3_saas_..._p_length_512.pth also works), or the CLaMP 2 one from "
    "https://huggingface.co/sander-wood/clamp2 (weights_clamp2_h_size_768_lr_5e-05_batch_128_scale_1_"
    "t_length_128_t_model_FacebookAI_xlm-roberta-base_t_dropout_True_m3_True.pth; model card licence: MIT). "
    "Pass the file with --symbolic_checkpoint PATH (or checkpoint=PATH)")
# Meta messages the authors' m3_compatible conversion drops (natural-language metadata).
DROPPED_META = ("text", "copyright", "track_name", "instrument_name", "lyrics", "marker", "cue_marker",
                "device_name")
DROPPED_EXTRA = {"clamp3": frozenset(), "clamp2": frozenset({"sequencer_specific", "sysex"})}


@dataclasses.dataclass(frozen=True)
class CLaMPConfig(TorchEmbedderConfig):
    embedder: ClassVar[str] = "clamp"

    # batch_size: segments per forward pass (the job's --batch_size is items per call). 0: 64 on
    # CUDA; 1 on CPU, where batching gains nothing and padding to the longest segment of a batch
    # costs (measured).
    variant: str = "auto"  # auto (from the checkpoint's keys) | clamp3 | clamp2
    hidden_size: int = 768
    num_layers: int = 12
    patch_size: int = 64
    max_patches: int = 512
    projection_dim: int = 768
    segment_patches: int = 0  # patches per segment; 0: max_patches, as the authors

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in ("auto", "clamp3", "clamp2"):
            raise ConfigError(f"clamp: variant must be auto, clamp3 or clamp2, got {self.variant!r}")
        if self.segment_patches < 0:
            raise ConfigError(f"clamp: segment_patches must be >= 0, got {self.segment_patches}")
        if self.segment_patches > self.max_patches:
            raise ConfigError(f"clamp: segment_patches {self.segment_patches} exceeds max_patches {self.max_patches} "
                              "(the encoder has no position embeddings past it)")
        try:
            self.model_config()
        except ValueError as exc:
            raise ConfigError(f"clamp: {exc}") from None

    def model_config(self):
        from embedders.symbolic.clamp_model import M3Config

        return M3Config(hidden_size=self.hidden_size, num_layers=self.num_layers, patch_size=self.patch_size,
                        max_patches=self.max_patches, projection_dim=self.projection_dim)

    @property
    def segment_length(self) -> int:
        return self.segment_patches or self.max_patches


# -- MIDI -> MTF ------------------------------------------------------------------------------------
def _mido():
    try:
        import mido
    except ImportError:
        raise MissingDependencyError("clamp", "mido", "clamp") from None
    return mido


def message_text(msg) -> str:
    """One MTF line: the message's values in ``dict()`` order, space separated, ASCII-escaped."""
    return " ".join(str(v) for v in msg.dict().values()).strip().encode("unicode_escape").decode("utf-8")


def midi_to_mtf(data: bytes, variant: str = "clamp3", item_id: str | None = None) -> str:
    """Standard MIDI File bytes -> MTF text (no trailing newline), as the authors' converter writes it."""
    mido = _mido()
    dropped_extra = DROPPED_EXTRA["clamp2" if variant == "clamp2" else "clamp3"]
    try:
        mid = mido.MidiFile(file=io.BytesIO(bytes(data)))
        merged = mid.merged_track
    except (OSError, EOFError, ValueError, IndexError, KeyError, TypeError, mido.KeySignatureError) as exc:
        raise MidiDecodeError(item_id, f"mido cannot read the MIDI: {type(exc).__name__}: {exc}") from None
    lines = [f"ticks_per_beat {mid.ticks_per_beat}"]
    for msg in merged:
        if (msg.is_meta and msg.type in DROPPED_META) or msg.type in dropped_extra:
            continue
        lines.append(message_text(msg))
    return "\n".join(lines)


def score_to_midi_bytes(score) -> bytes:
    """A symusic Score (any time unit) as Standard MIDI File bytes (see the module note on the round trip)."""
    if "Tick" not in type(score).__name__:
        score = score.to("tick")
    return bytes(score.dumps_midi())


# -- MTF -> patches -> segments ---------------------------------------------------------------------
def mtf_patch_texts(mtf: str, patch_size: int) -> list[str]:
    """Join runs of same-type lines into patches of at most ``patch_size - 2`` characters."""
    pieces = mtf.split("\n")
    lines = [p + "\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    patches, current = [], ""
    for line in lines:
        kind, _, values = line.partition(" ")
        if current.startswith(kind) and len(current) + len(values) <= patch_size - 2:
            current = current[:-1] + "\t" + values  # drop the newline, append this line's values
        else:
            if current:
                patches.append(current)
            current = line
    if current:
        patches.append(current)
    return patches


def patch_ids(text: str, patch_size: int) -> list[int]:
    ids = ([BOS] + [ord(c) for c in text] + [EOS])[:patch_size]
    return ids + [PAD] * (patch_size - len(ids))


def encode_mtf(mtf: str, patch_size: int) -> np.ndarray:
    """MTF text -> (n_patches, patch_size) int64 character ids, bos and eos patches included."""
    texts = [chr(BOS) * patch_size] + mtf_patch_texts(mtf, patch_size) + [chr(EOS) * patch_size]
    out = np.array([patch_ids(t, patch_size) for t in texts], dtype=np.int64)
    if out.max() >= 128:  # cannot happen for mido's output (unicode_escape); guards other callers
        raise ValueError(f"MTF text holds non-ASCII characters (id {int(out.max())}); the model reads ids < 128")
    return out


def segment_spans(n: int, length: int) -> list[tuple[int, int]]:
    """[start, stop) of each segment of a piece of ``n`` patches; the last one is the final ``length``."""
    spans = [(s, min(s + length, n)) for s in range(0, n, length)]
    spans[-1] = (max(0, n - length), n)
    return spans


def segment_weights(n: int, length: int) -> np.ndarray:
    """The authors' weights: ``length`` per full segment, the remainder for the last one if any."""
    full, rest = divmod(n, length)
    return np.array([length] * full + ([rest] if rest else []), dtype=np.float64)


def weighted_average(sequence: np.ndarray, weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)[:, None]
    return ((np.asarray(sequence, dtype=np.float64) * w).sum(axis=0) / w.sum()).astype(np.float32)


def checkpoint_variant(path: str) -> str:
    """clamp3 or clamp2, from the names of the checkpoint's keys (a memory-mapped read, once per file)."""
    from embedders.symbolic.clamp_model import detect_variant, read_state_dict

    return memo("clamp_variant", path, lambda p: detect_variant(read_state_dict(p)[0], p))


@register
class CLaMPEmbedder(TorchEmbedder):
    name: ClassVar[str] = "clamp"
    modality: ClassVar[str] = "symbolic"
    sample_rate: ClassVar[int | None] = None
    Config: ClassVar[type[EmbedderConfig]] = CLaMPConfig
    hop_seconds = None  # frames are patch segments
    default_batch_size: ClassVar[int] = 16
    #: ``embed`` also takes the original Standard MIDI File bytes, the authors' exact input; a
    #: pipeline that has them should pass them instead of the decoded Score (see the module note).
    accepts_midi_bytes: ClassVar[bool] = True
    source_modules: ClassVar[tuple[str, ...]] = ("embedders.symbolic.clamp_model",)
    forward_batch: ClassVar[dict[str, int]] = {"cpu": 1, "cuda": 64}
    packages: ClassVar[tuple[str, ...]] = ("mido",)
    how_to_get: ClassVar[str] = HOW_TO_GET
    weights_label: ClassVar[str] = "CLaMP checkpoint"

    def check_dependencies(self) -> None:
        _mido()

    @property
    def variant(self) -> str:
        """The checkpoint's naming (clamp3 / clamp2), which also decides what MTF conversion drops."""
        cfg: CLaMPConfig = self.config  # type: ignore[assignment]
        return cfg.variant if cfg.variant != "auto" else checkpoint_variant(self.weights_path)

    def load_model(self, path: str):
        from embedders.symbolic.clamp_model import load_symbolic_model

        cfg: CLaMPConfig = self.config  # type: ignore[assignment]
        model, _, meta = load_symbolic_model(path, cfg.model_config(), self.variant)
        model.checkpoint_meta = meta
        return model

    @property
    def checkpoint_meta(self) -> dict[str, Any]:
        return self.model.checkpoint_meta

    @classmethod
    def output_dim(cls, config: EmbedderConfig) -> int:
        return int(config.projection_dim)  # type: ignore[attr-defined]

    # -- embedding -------------------------------------------------------------------------------
    def mtf(self, item: Any) -> str:
        """The MTF text of one item (a symusic Score, or Standard MIDI File bytes)."""
        if isinstance(item, (bytes, bytearray, memoryview)):
            data = bytes(item)
        elif hasattr(item, "dumps_midi"):
            if item.note_num() == 0:
                raise EmptyInputError(None, "score has no notes")
            data = score_to_midi_bytes(item)
        else:
            raise TypeError(f"clamp embeds symusic Scores or MIDI file bytes, got {type(item).__name__}")
        return midi_to_mtf(data, self.variant)

    def patches(self, item: Any) -> np.ndarray:
        """(n_patches, patch_size) int64 character ids of one item, bos and eos patches included."""
        return encode_mtf(self.mtf(item), self.config.patch_size)  # type: ignore[attr-defined]

    def prepare(self, item: Any) -> np.ndarray:
        return self.patches(item)

    def forward(self, prepared: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Patches per item -> (T_i, D) segment vectors; segments of all items batched, longest first."""
        import torch

        length, patch_size = self.config.segment_length, self.config.patch_size  # type: ignore[attr-defined]
        flat = [p[a:b] for p in prepared for a, b in segment_spans(len(p), length)]
        order = sorted(range(len(flat)), key=lambda k: -len(flat[k]))  # longest first: little padding
        vectors = np.zeros((len(flat), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            take = order[start:start + self.batch_size]
            width = len(flat[take[0]])
            patches = torch.zeros((len(take), width, patch_size), dtype=torch.long)
            mask = torch.zeros((len(take), width), dtype=torch.bool)
            for row, k in enumerate(take):
                seg = torch.from_numpy(np.asarray(flat[k], dtype=np.int64))
                patches[row, :len(seg)], mask[row, :len(seg)] = seg, True
            with self.inference():
                out = self.model(self.to_device(patches), self.to_device(mask))  # (b, D)
            vectors[take] = out.float().cpu().numpy()
        bounds = np.cumsum([0, *(len(segment_spans(len(p), length)) for p in prepared)])
        return [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def average(self, prepared: np.ndarray, sequence: np.ndarray) -> np.ndarray:
        """The authors' global vector (``--get_global``): segments weighted by their new patches."""
        return weighted_average(sequence, segment_weights(len(prepared), self.config.segment_length))  # type: ignore[attr-defined]

    def embed_global(self, items: Sequence[Any]) -> list[np.ndarray]:
        """The authors' global vector per raw item (what ``average`` gives the store)."""
        prepared = [self.prepare(item) for item in items]
        return [self.average(p, seq) for p, seq in zip(prepared, self.forward(prepared))]
