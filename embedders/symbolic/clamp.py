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
frames are segments, not a time grid (``hop_seconds = None``). The store's ``average`` is the
unweighted mean over segments, which equals the authors' global vector when T == 1 (a piece under
~510 patches); ``embed_global`` returns the length-weighted one for any T.

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
import hashlib
import io
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from embedders import checkpoint_files
from embedders.base import (
    CheckpointError,
    ConfigError,
    Embedder,
    EmbedderConfig,
    EmptyInputError,
    MidiDecodeError,
    MissingDependencyError,
)
from embedders.registry import register

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
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_CACHE: dict[tuple, Any] = {}


@dataclasses.dataclass(frozen=True)
class CLaMPConfig(EmbedderConfig):
    checkpoint: str = ""
    variant: str = "auto"  # auto (from the checkpoint's keys) | clamp3 | clamp2
    hidden_size: int = 768
    num_layers: int = 12
    patch_size: int = 64
    max_patches: int = 512
    projection_dim: int = 768
    segment_patches: int = 0  # patches per segment; 0: max_patches, as the authors
    # Segments per forward pass (the job's --batch_size is items per call). 0: 64 on CUDA; 1 on CPU,
    # where batching gains nothing and padding to the longest segment of a batch costs (measured).
    batch_size: int = 0
    precision: str = "auto"  # auto: bf16 (fp16 without bf16 support) autocast on CUDA, fp32 on CPU
    device: str = "auto"  # auto: cuda when visible (a Ray actor with num_gpus), else cpu

    def __post_init__(self) -> None:
        if self.variant not in ("auto", "clamp3", "clamp2"):
            raise ConfigError(f"clamp: variant must be auto, clamp3 or clamp2, got {self.variant!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"clamp: precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 0 or self.segment_patches < 0:
            raise ConfigError(f"clamp: batch_size and segment_patches must be >= 0, got {self.batch_size}, "
                              f"{self.segment_patches}")
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


# -- checkpoint identity ------------------------------------------------------------------------------
def _file_key(path: str) -> tuple[str, int, int]:
    if not path:
        raise CheckpointError(f"embedder 'clamp' needs a checkpoint: {HOW_TO_GET}")
    try:
        return checkpoint_files.file_key(path)
    except OSError:
        raise CheckpointError(f"CLaMP checkpoint not found: {path}; {HOW_TO_GET}") from None


def checkpoint_sha256(path: str) -> str:
    _file_key(path)  # a missing file raises CheckpointError with where to get it
    return checkpoint_files.file_sha256(path)


@register
class CLaMPEmbedder(Embedder):
    name: ClassVar[str] = "clamp"
    modality: ClassVar[str] = "symbolic"
    sample_rate: ClassVar[int | None] = None
    Config: ClassVar[type[EmbedderConfig]] = CLaMPConfig
    hop_seconds = None  # frames are patch segments
    default_batch_size: ClassVar[int] = 16
    #: ``embed`` also takes the original Standard MIDI File bytes, the authors' exact input; a
    #: pipeline that has them should pass them instead of the decoded Score (see the module note).
    accepts_midi_bytes: ClassVar[bool] = True

    def __init__(self, config: CLaMPConfig | None = None):
        super().__init__(config)
        _mido()
        import torch

        from embedders.symbolic.clamp_model import load_symbolic_model

        cfg = self.config
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"clamp: device {cfg.device!r} requested but CUDA is not available")
        self.device = torch.device(device)
        key = ("model", *_file_key(cfg.checkpoint), cfg.model_config(), cfg.variant, str(self.device))
        if key not in _CACHE:  # one load per actor process, however often the embedder is rebuilt
            model, variant, meta = load_symbolic_model(cfg.checkpoint, cfg.model_config(), cfg.variant)
            _CACHE[key] = (model.to(self.device), variant, meta)
        self.model, self.variant, self.checkpoint_meta = _CACHE[key]
        self.autocast_dtype = self._autocast_dtype(cfg.precision, self.device.type)
        self.batch_size = cfg.batch_size or (64 if self.device.type == "cuda" else 1)

    @staticmethod
    def _autocast_dtype(precision: str, device_type: str):
        import torch

        if precision == "fp32" or (precision == "auto" and device_type != "cuda"):
            return None
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    # -- self-description ----------------------------------------------------------------------
    @classmethod
    def output_dim(cls, config: EmbedderConfig) -> int:
        return int(config.projection_dim)  # type: ignore[attr-defined]

    @classmethod
    def source_hash(cls) -> str:
        """Also the model file: a change there changes outputs."""
        import inspect

        from embedders.symbolic import clamp_model

        digest = hashlib.sha256(super().source_hash().encode())
        digest.update(inspect.getsource(clamp_model).encode())
        return digest.hexdigest()[:16]

    @classmethod
    def hash_config(cls, config: EmbedderConfig) -> str:
        base = super().hash_config(config)
        return hashlib.sha256(f"{base}:{checkpoint_sha256(config.checkpoint)}".encode()).hexdigest()[:16]  # type: ignore[attr-defined]

    @classmethod
    def describe_config(cls, config: EmbedderConfig) -> dict[str, Any]:
        out = super().describe_config(config)
        out["checkpoint_sha256"] = checkpoint_sha256(config.checkpoint)  # type: ignore[attr-defined]
        return out

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
        return encode_mtf(self.mtf(item), self.config.patch_size)

    def embed_segments(self, items: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per item: (segment vectors (T, D) float32, the authors' segment weights (T,))."""
        import torch

        length = self.config.segment_length
        per_item = [self.patches(item) for item in items]
        flat = [(i, p[a:b]) for i, p in enumerate(per_item) for a, b in segment_spans(len(p), length)]
        order = sorted(range(len(flat)), key=lambda k: -len(flat[k][1]))  # longest first: little padding
        vectors = np.zeros((len(flat), self.dim), dtype=np.float32)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                                    enabled=self.autocast_dtype is not None):
            for start in range(0, len(order), self.batch_size):
                take = order[start:start + self.batch_size]
                width = len(flat[take[0]][1])
                patches = torch.zeros((len(take), width, self.config.patch_size), dtype=torch.long)
                mask = torch.zeros((len(take), width), dtype=torch.bool)
                for row, k in enumerate(take):
                    seg = torch.from_numpy(flat[k][1])
                    patches[row, :len(seg)], mask[row, :len(seg)] = seg, True
                out = self.model(patches.to(self.device), mask.to(self.device))  # (b, D)
                vectors[take] = out.float().cpu().numpy()
        results, k = [], 0
        for p in per_item:
            t = len(segment_spans(len(p), length))
            results.append((vectors[k:k + t], segment_weights(len(p), length)))
            k += t
        return results

    def embed(self, items: Sequence[Any]) -> list[np.ndarray]:
        return [self.check_output(None, seq) for seq, _ in self.embed_segments(items)]

    def embed_global(self, items: Sequence[Any]) -> list[np.ndarray]:
        """The authors' global vector per item (``--get_global``): segments averaged by length weights."""
        return [weighted_average(seq, w) for seq, w in self.embed_segments(items)]
