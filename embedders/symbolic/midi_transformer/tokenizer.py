"""The MIDI tokenizer of the seed's transformer: MidiTok REMI + BPE, trained on the training split only.

Choices (all in ``TOKENIZER_OPTIONS``; changing any of them changes ``tokenizer_hash`` and so
invalidates every token cache built with the old tokenizer):

* REMI: Bar / Position / Pitch / Velocity / Duration tokens, plus Tempo_ and TimeSig_ tokens
  (``use_tempos``, ``use_time_signatures``): the style questions of the project need tempo and metre.
* ``use_programs=True`` with MidiTok's default ``one_token_stream_for_programs=True``: every track
  goes into ONE sequence, each note preceded by its Program_ token. A multi-track piece is one
  sequence for one embedding, and the model sees the instrumentation.
* drum tracks (MIDI channel 10) are kept: MidiTok's drum program (``Program_-1``) and ``PitchDrum_``
  tokens for notes 22-87 (``drums_pitch_range``): the General MIDI percussion map (27-87) plus the
  Roland TD-11 hi-hat edge notes 22 and 26 that the Groove MIDI Dataset records (MidiTok's default
  range starts at 27 and would drop them).
* default ``beat_res`` ({(0, 4): 8, (4, 12): 4} positions per beat), 32 velocity bins.
* special tokens PAD, BOS, EOS, MASK (MidiTok names them ``PAD_None`` ... and gives them ids 0..3).
* BPE (MidiTok's default model) learned per bar (``encode_ids_split="bar"``, the default), so a
  learned token never spans a bar line. A learned token can merge several base tokens, e.g.
  ``Bar TimeSig_4/4 Position_0``; ``context_table`` says, per id, which Tempo_/TimeSig_ base
  tokens it contains, which is what context-preserving chunking needs.

Base-token ids keep their ids in the BPE vocabulary (MidiTok builds the BPE alphabet from them),
so a base Tempo_ or TimeSig_ id can be inserted into a BPE-encoded sequence as is.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedders.store.atomic import atomic_path

SPECIAL_TOKENS = ("PAD", "BOS", "EOS", "MASK")
TOKENIZER_OPTIONS: dict[str, Any] = {
    "use_tempos": True,
    "use_time_signatures": True,
    "use_programs": True,
    "drums_pitch_range": (22, 88),
    "num_velocities": 32,
    "special_tokens": list(SPECIAL_TOKENS),
}
TRAINING_FILES_KEY = "training_files"  # extra key in the saved JSON; MidiTok ignores it for the vocab


def make_tokenizer():
    """An untrained REMI tokenizer with the project's options."""
    from miditok import REMI, TokenizerConfig

    return REMI(TokenizerConfig(**TOKENIZER_OPTIONS))


def train_tokenizer(train_files: Sequence[str | os.PathLike[str]], vocab_size: int):
    """Learn BPE on ``train_files`` (the training split only, so no evaluation piece shapes the vocab).

    A ``vocab_size`` not above the base vocabulary (~520 tokens) leaves the tokenizer untrained
    (MidiTok warns); it then emits base ids only, which everything here handles.
    """
    files = [Path(f) for f in train_files]
    if not files:
        raise ValueError("cannot train the tokenizer: no training files were given")
    tokenizer = make_tokenizer()
    if vocab_size > len(tokenizer):
        tokenizer.train(vocab_size=int(vocab_size), files_paths=files)
    return tokenizer


def save_tokenizer(tokenizer, path: str | os.PathLike[str], training_files: Sequence[str] = ()) -> Path:
    """Write the tokenizer JSON atomically (tmp file + os.replace), recording its training files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = tokenizer.to_dict()
    params[TRAINING_FILES_KEY] = [os.fspath(f) for f in training_files]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(params, indent=1))
    return path


def load_tokenizer(path: str | os.PathLike[str]):
    """Load a tokenizer saved by ``save_tokenizer`` (or MidiTok's own ``save``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return tokenizer_from_params(path.read_text())


def load_or_train_tokenizer(path: str | os.PathLike[str], train_files: Sequence[str | os.PathLike[str]],
                            vocab_size: int):
    """Load the tokenizer at ``path`` when present; otherwise train it on ``train_files`` and save it there."""
    path = Path(path)
    if path.is_file():
        return load_tokenizer(path)
    tokenizer = train_tokenizer(train_files, vocab_size)
    save_tokenizer(tokenizer, path, [os.fspath(f) for f in train_files])
    return tokenizer


def training_files(path: str | os.PathLike[str]) -> list[str]:
    """The files a saved tokenizer was trained on (empty when unknown)."""
    return list(json.loads(Path(path).read_text()).get(TRAINING_FILES_KEY, []))


def tokenizer_params(tokenizer) -> str:
    """The tokenizer as a JSON string (MidiTok's ``to_dict``): what a checkpoint stores.

    Keys keep MidiTok's order: the vocabulary is rebuilt in the order of the config's mappings
    (e.g. ``time_signature_range``), so sorting them would renumber tokens of an untrained tokenizer.
    """
    return json.dumps(tokenizer.to_dict())


def tokenizer_from_params(params: str | dict[str, Any]):
    """Rebuild a tokenizer from ``tokenizer_params`` output (MidiTok loads only from a file)."""
    import miditok

    data = json.loads(params) if isinstance(params, str) else dict(params)
    data.pop(TRAINING_FILES_KEY, None)
    cls = getattr(miditok, data.get("tokenization", "REMI"))
    fd, tmp = tempfile.mkstemp(suffix=".json", prefix="tokenizer-")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        return cls(params=tmp)
    finally:
        os.unlink(tmp)


def tokenizer_hash(tokenizer) -> str:
    """Identifies the vocabulary and the encoding (config + BPE model); 16 hex digits."""
    cached = getattr(tokenizer, "_avs_hash", None)
    if cached is not None and cached[0] is tokenizer._model:
        return cached[1]
    params = tokenizer.to_dict()
    # Library versions do not change the ids; leaving them out keeps caches valid across upgrades
    # that keep the format (a format change would show up in config or model).
    for key in ("miditok_version", "symusic_version", "hf_tokenizers_version"):
        params.pop(key, None)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    tokenizer._avs_hash = (tokenizer._model, digest)
    return digest


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    bos: int
    eos: int
    mask: int

    @property
    def never_masked(self) -> tuple[int, ...]:
        return (self.pad, self.bos, self.eos, self.mask)


def special_ids(tokenizer) -> SpecialIds:
    vocab = tokenizer.vocab
    return SpecialIds(*(int(vocab[f"{t}_None"]) for t in SPECIAL_TOKENS))


def vocab_size(tokenizer) -> int:
    """Number of ids the model must embed (the BPE vocabulary when trained)."""
    return int(len(tokenizer))


@dataclass(frozen=True)
class ContextTable:
    """Per token id: does it open a bar, and the last Tempo_/TimeSig_ base id inside it (-1: none)."""

    bar_start: np.ndarray  # (V,) bool
    tempo: np.ndarray  # (V,) int32
    time_sig: np.ndarray  # (V,) int32


def context_table(tokenizer) -> ContextTable:
    """Build (once per tokenizer object) the table used by context-preserving chunking."""
    cached = getattr(tokenizer, "_avs_context", None)
    if cached is not None and cached[0] is tokenizer._model:
        return cached[1]
    base = tokenizer.vocab  # base token -> id
    if tokenizer.is_trained:
        expand = tokenizer._vocab_learned_bytes_to_tokens  # bytes -> list of base tokens
        tokens_of = {i: expand[b] for b, i in tokenizer.vocab_model.items() if b in expand}
    else:
        tokens_of = {i: [t] for t, i in base.items()}
    size = vocab_size(tokenizer)
    bar = np.zeros(size, dtype=bool)
    tempo = np.full(size, -1, dtype=np.int32)
    ts = np.full(size, -1, dtype=np.int32)
    for i, toks in tokens_of.items():
        if i >= size or not toks:
            continue
        bar[i] = toks[0].startswith("Bar_")
        for t in toks:
            if t.startswith("Tempo_"):
                tempo[i] = base[t]
            elif t.startswith("TimeSig_"):
                ts[i] = base[t]
    table = ContextTable(bar, tempo, ts)
    tokenizer._avs_context = (tokenizer._model, table)
    return table


def tokenize_score(tokenizer, score) -> np.ndarray:
    """Token ids (BPE-encoded when trained) of a ``symusic.Score``, as int32; no BOS/EOS.

    With ``use_programs`` MidiTok returns one sequence for all tracks; a tokenizer configured per
    track returns one sequence per track, which are concatenated in track order.
    """
    seq = tokenizer.encode(score)
    seqs = seq if isinstance(seq, list) else [seq]
    ids = [np.asarray(s.ids, dtype=np.int32) for s in seqs]
    return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)


def tokenize_file(tokenizer, path: str | os.PathLike[str]) -> np.ndarray:
    """Token ids of a MIDI file; unreadable or note-less files raise the named errors of embedders.io."""
    from embedders.io import decode_midi

    return tokenize_score(tokenizer, decode_midi(path, item_id=os.fspath(path)))
