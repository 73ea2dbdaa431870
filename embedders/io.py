"""Decoding recordings for embedders: audio to mono float32 at a target rate, MIDI to symusic Scores.

Every failure is a named ``ItemError`` carrying the item id, so a batch job can record it and go on.
"""

from __future__ import annotations

import io
import os
import re
from typing import Union

import numpy as np

from embedders.base import AudioDecodeError, EmptyInputError, MidiDecodeError, MissingFileError

PathOrBytes = Union[str, "os.PathLike[str]", bytes]

#: Peak amplitude (full scale = 1.0) below which audio counts as silent: -100 dBFS.
SILENCE_PEAK = 1e-5


def read_bytes(path: str | os.PathLike[str], item_id: str | None) -> bytes:
    """Read a whole file (a local path or a URI: s3://, gs://, ...); a missing one raises MissingFileError
    naming the item. Other storage failures (credentials, network) are not the item's fault and propagate."""
    from embedders.store import filesystem as fs

    if fs.is_remote(path):
        try:
            return fs.read_bytes(path)
        except FileNotFoundError:
            raise MissingFileError(item_id, f"file not found: {path}") from None
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise MissingFileError(item_id, f"file not found: {path}") from None
    except IsADirectoryError:
        raise MissingFileError(item_id, f"expected a file, found a directory: {path}") from None
    except PermissionError as exc:
        raise MissingFileError(item_id, f"cannot read {path}: {exc.strerror}") from None


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) of a mono float32 signal."""
    if orig_sr == target_sr:
        return audio
    import soxr

    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def decode_audio(
    source: PathOrBytes,
    target_sr: int,
    item_id: str | None = None,
    *,
    check_silence: bool = True,
) -> np.ndarray:
    """Decode audio (WAV, FLAC, OGG, MP3: whatever libsndfile reads) to mono float32 at ``target_sr``.

    Raises MissingFileError, AudioDecodeError, or EmptyInputError (zero length; silent unless
    ``check_silence`` is False).
    """
    import soundfile as sf

    data = source if isinstance(source, bytes) else read_bytes(source, item_id)
    label = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        # libsndfile names the in-memory buffer; say only what went wrong, the path is in our prefix
        message = re.sub(r"^Error opening <_io\.BytesIO object at 0x[0-9a-f]+>: ", "", str(exc).splitlines()[0]) \
            if str(exc) else type(exc).__name__
        raise AudioDecodeError(item_id, f"cannot decode audio {label}: {message}") from None
    if audio.shape[0] == 0:
        raise EmptyInputError(item_id, f"zero-length audio: {label}")
    mono = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    if not np.isfinite(mono).all():
        raise AudioDecodeError(item_id, f"audio contains NaN or infinite samples: {label}")
    if check_silence:
        peak = float(np.max(np.abs(mono)))
        if peak < SILENCE_PEAK:
            raise EmptyInputError(item_id, f"silent audio (peak {peak:.1e} < {SILENCE_PEAK:.0e}): {label}")
    return np.ascontiguousarray(resample(mono, int(sr), int(target_sr)), dtype=np.float32)


def decode_midi(source: PathOrBytes, item_id: str | None = None):
    """Parse a Standard MIDI File to a ``symusic.Score`` (tick time).

    Raises MissingFileError, MidiDecodeError, or EmptyInputError when it holds no notes.
    """
    import symusic

    data = source if isinstance(source, bytes) else read_bytes(source, item_id)
    label = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    try:
        score = symusic.Score.from_midi(data)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise MidiDecodeError(item_id, f"cannot parse MIDI {label}: {str(exc).splitlines()[0]}") from None
    if score.note_num() == 0:
        raise EmptyInputError(item_id, f"MIDI has no notes: {label}")
    return score


def midi_duration_seconds(score) -> float:
    """End of the last note in seconds (tempo changes honoured), rounded to 1 ms.

    symusic stores seconds as float32, so a piece ending exactly at 8 s can come back as 8.0000038 s;
    unrounded, that would add a frame that the audio rendering of the same piece does not have.
    """
    ends = [float((a["time"] + a["duration"]).max())
            for a in (track.notes.numpy() for track in score.to("second").tracks) if len(a["time"])]
    return round(max(ends), 3) if ends else 0.0
