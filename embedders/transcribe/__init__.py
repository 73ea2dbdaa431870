"""Audio -> MIDI transcription, for the ``transcribed_embeddings`` medium (a symbolic embedder on the
transcription of each recording). No Ray here; the embedding job drives it.

API for the job (everything below is importable from ``embedders.transcribe``):

    transcriber = get_transcriber("basic_pitch", **options)   # once per worker; ConfigError on a bad name/option
    transcriber.sample_rate                                   # 22050: decode the audio at this rate ...
    t = transcriber.transcribe(waveform, sr=None, bpm=row_bpm)  # ... or pass sr= and it is resampled
    t.notes      # NOTE_DTYPE array: start, end (seconds), pitch, velocity; sorted by onset, then pitch
    t.midi       # bytes of a Standard MIDI File, written like the ground truth (480 tpq, tempo = bpm or 120)
    t.score(item_id)                 # symusic.Score for a symbolic embedder; EmptyInputError when no notes
    note_onset_scores(reference, t)  # {precision, recall, f1, n_reference, n_estimate} vs the paired MIDI
                                     # (reference: symusic.Score or MIDI bytes); mir_eval, 50 ms onsets
    transcriber.describe(), transcriber.config_hash()  # for the store's attrs and resume identity

    transcribe(waveform, sr, bpm=None, transcriber="basic_pitch", **options)  # one-off convenience

``transcribe`` raises the embedders' named per-item errors (EmptyInputError for zero-length audio,
AudioDecodeError for non-finite samples), ConfigError for a bad bpm, MissingDependencyError when
the ``[basic-pitch]`` extra or the basic-pitch wheel is absent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedders.transcribe.base import (
    Transcriber,
    TranscriberConfig,
    Transcription,
    available,
    get_transcriber,
    get_transcriber_class,
)
from embedders.transcribe.midi import NOTE_DTYPE, notes_to_midi
from embedders.transcribe.quality import note_onset_scores


def transcribe(waveform: np.ndarray, sr: int, *, bpm: float | None = None, transcriber: str = "basic_pitch",
               **options: Any) -> Transcription:
    """Transcribe one mono waveform sampled at ``sr`` Hz (see the module docstring)."""
    return get_transcriber(transcriber, **options).transcribe(waveform, sr, bpm=bpm)


__all__ = ["NOTE_DTYPE", "Transcriber", "TranscriberConfig", "Transcription", "available", "get_transcriber",
           "get_transcriber_class", "note_onset_scores", "notes_to_midi", "transcribe"]
