"""Transcription quality against a reference MIDI: mir_eval's note onset precision, recall and F1.

A note of the transcription matches one of the reference (one-to-one, maximum matching) when the
pitches agree within 50 cents and the onsets within ``onset_tolerance`` (50 ms, mir_eval's and
MIREX's default); offsets are ignored (``offset_ratio=None``), as in the onset-only F1 reported for
basic-pitch. Reference drum tracks are left out unless ``include_drums`` (a pitched transcriber
cannot match them). With ``merge_unisons`` (default) notes of equal pitch starting within 1 ms are
counted once on either side: two voices in unison sound as one note, which no audio transcriber can
split. An empty side gives 0.0 for the scores that need it (mir_eval's convention).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from embedders.transcribe.midi import score_notes, sort_notes

#: Shortest interval passed to mir_eval, which rejects zero-length notes.
_MIN_DURATION = 1e-3


def as_notes(source: Any, *, include_drums: bool = False) -> np.ndarray:
    """NOTE_DTYPE notes of a ``symusic.Score``, MIDI bytes, a ``Transcription`` or a NOTE_DTYPE array.
    Raises MidiDecodeError on bytes that are not MIDI."""
    if isinstance(source, np.ndarray):
        return sort_notes(source)
    if hasattr(source, "notes") and hasattr(source, "midi"):  # a Transcription
        return sort_notes(source.notes)
    if isinstance(source, (bytes, bytearray)):
        import symusic

        from embedders.base import MidiDecodeError

        try:
            source = symusic.Score.from_midi(bytes(source))
        except (RuntimeError, ValueError, IndexError) as exc:
            raise MidiDecodeError(None, f"cannot parse MIDI <bytes>: {str(exc).splitlines()[0]}") from None
    return score_notes(source, include_drums=include_drums)


def drop_unison_duplicates(notes: np.ndarray) -> np.ndarray:
    """Keep the first of the notes that share a pitch and an onset (rounded to 1 ms)."""
    notes = sort_notes(notes)
    if len(notes) == 0:
        return notes
    keys = np.stack([np.round(notes["start"] * 1000.0), notes["pitch"].astype(np.float64)], axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    return notes[np.sort(first)]


def _mir_eval_inputs(notes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    intervals = np.stack([notes["start"], np.maximum(notes["end"], notes["start"] + _MIN_DURATION)], axis=1)
    pitches_hz = 440.0 * 2.0 ** ((notes["pitch"].astype(np.float64) - 69.0) / 12.0)
    return intervals.reshape(-1, 2), pitches_hz


def note_onset_scores(reference: Any, estimate: Any, *, onset_tolerance: float = 0.05,
                      include_drums: bool = False, merge_unisons: bool = True) -> dict[str, float | int]:
    """{precision, recall, f1, n_reference, n_estimate} of ``estimate`` against ``reference`` (module doc).

    Both may be a ``symusic.Score``, MIDI bytes, a ``Transcription`` or a NOTE_DTYPE array.
    """
    import mir_eval

    ref = as_notes(reference, include_drums=include_drums)
    est = as_notes(estimate, include_drums=include_drums)
    if merge_unisons:
        ref, est = drop_unison_duplicates(ref), drop_unison_duplicates(est)
    if len(ref) == 0 or len(est) == 0:
        precision = recall = f1 = 0.0
    else:
        ref_i, ref_p = _mir_eval_inputs(ref)
        est_i, est_p = _mir_eval_inputs(est)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mir_eval warns about empty inputs, handled above
            precision, recall, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(
                ref_i, ref_p, est_i, est_p, onset_tolerance=onset_tolerance, pitch_tolerance=50.0, offset_ratio=None)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "n_reference": int(len(ref)), "n_estimate": int(len(est))}

