"""The basic-pitch model (Bittner et al., ICASSP 2022) from the ``basic-pitch`` wheel, run by onnxruntime.

Shared by the ``basic_pitch`` audio embedder and the ``basic_pitch`` transcriber. No TensorFlow:
the wheel ships the model as ONNX (``basic_pitch/saved_models/icassp_2022/nmp.onnx``, 230 kB,
Apache-2.0), and onnxruntime runs it. basic-pitch's own metadata pulls TensorFlow and numpy < 2,
so the wheel is installed ``pip install --no-deps basic-pitch==0.4.0`` and the ``[basic-pitch]``
extra lists what its code really imports.

Input: mono float32 audio at 22050 Hz. The model reads fixed windows of 43844 samples (2 s less
one FFT hop) and returns, per window, 172 frames (hop 256 samples, 11.61 ms) of three
posteriorgrams with values in [0, 1]:

* ``note``    (frames, 88): a note of MIDI pitch 21 + k sounds,
* ``onset``   (frames, 88): a note of MIDI pitch 21 + k starts,
* ``contour`` (frames, 264): pitch salience at 3 bins per semitone, bin 3k + 1 centred on
  MIDI pitch 21 + k (27.5 Hz * 2 ** (b / 36) for bin b, bin 1 = A0).

The recording is cut into windows as basic-pitch's ``run_inference`` does: 3840 zeros (15 frames)
before the audio, windows every 36164 samples (the window less 30 overlapping frames), the last
window zero-padded; 15 frames are dropped at both ends of every window and the rest concatenated,
then cut to floor(n_samples * 86 / 22050) frames (basic-pitch's own count, at its integer frame
rate 22050 // 256 = 86; at least one frame). Frame n then sits at sample
(n // 142) * 36164 + (n % 142) * 256 of the recording (``frame_times``): 256-sample steps inside a
window and a 188-sample shorter step across each window boundary, 86.58 frames per second on
average, and the last 0.7% of a recording has no frame of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from embedders.base import AudioDecodeError, CheckpointError, EmbedderError, EmptyInputError, MissingDependencyError

SAMPLE_RATE = 22050
FFT_HOP = 256
WINDOW_SAMPLES = 2 * SAMPLE_RATE - FFT_HOP  # 43844
WINDOW_FRAMES = 172
OVERLAP_FRAMES = 30
HALF_OVERLAP = OVERLAP_FRAMES // 2
KEPT_FRAMES = WINDOW_FRAMES - OVERLAP_FRAMES  # 142
HOP_SAMPLES = WINDOW_SAMPLES - OVERLAP_FRAMES * FFT_HOP  # 36164
NOMINAL_FPS = SAMPLE_RATE // FFT_HOP  # 86: basic-pitch counts output frames at this rate
N_NOTES = 88
N_CONTOUR = 3 * N_NOTES
MIDI_OFFSET = 21  # pitch of note bin 0 (A0)
WHEEL = "basic-pitch==0.4.0"
MODEL_IN_WHEEL = ("saved_models", "icassp_2022", "nmp.onnx")
_INPUT = "serving_default_input_2:0"
_OUTPUTS = {"note": "StatefulPartitionedCall:1", "onset": "StatefulPartitionedCall:2",
            "contour": "StatefulPartitionedCall:0"}
#: Windows per onnxruntime call: bounds memory (~1.5 MB of input per window) on long recordings.
WINDOWS_PER_CALL = 32

_SESSIONS: dict[tuple[str, int, int, int], Any] = {}  # (path, size, mtime, threads) -> InferenceSession
_SHA256: dict[tuple[str, int, int], str] = {}


class WheelMissingError(MissingDependencyError):
    """The basic-pitch wheel (which holds the model file) is not installed."""

    def __init__(self, user: str):
        EmbedderError.__init__(
            self, f"'{user}' needs the model file from the basic-pitch wheel, which is not installed. "
            f"Install it with: pip install --no-deps {WHEEL} (its metadata pulls TensorFlow) and "
            "pip install 'audio-vs-symbolic[basic-pitch]' -c constraints.txt for what it imports")


@dataclasses.dataclass(frozen=True)
class Posteriorgrams:
    """The model's three outputs for one recording; ``times`` (seconds) is the start of each frame."""

    note: np.ndarray     # (N, 88) float32
    onset: np.ndarray    # (N, 88) float32
    contour: np.ndarray  # (N, 264) float32
    times: np.ndarray    # (N,) float64

    def stacked(self) -> np.ndarray:
        """(N, 440) float32: note, onset and contour side by side."""
        return np.concatenate([self.note, self.onset, self.contour], axis=1)


def import_onnxruntime(user: str):
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(user, "onnxruntime", "basic_pitch") from None
    return onnxruntime


def default_model_path(user: str = "basic_pitch") -> str:
    """The wheel's ``nmp.onnx``, found without importing basic_pitch (whose import logs warnings)."""
    spec = importlib.util.find_spec("basic_pitch")
    if spec is None or not spec.submodule_search_locations:
        raise WheelMissingError(user)
    return os.path.join(list(spec.submodule_search_locations)[0], *MODEL_IN_WHEEL)


def model_path(checkpoint: str, user: str = "basic_pitch") -> str:
    """``checkpoint`` when given, else the wheel's model; raises CheckpointError when it is missing."""
    path = checkpoint or default_model_path(user)
    if not os.path.isfile(path):
        raise CheckpointError(f"{user}: ONNX model file not found: {path}")
    return path


def _file_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)


def weights_sha256(path: str) -> str:
    key = _file_key(path)
    if key not in _SHA256:
        with open(path, "rb") as fh:
            _SHA256[key] = hashlib.sha256(fh.read()).hexdigest()
    return _SHA256[key]


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("basic-pitch", "onnxruntime"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def resolve_threads(threads: int) -> int:
    """onnxruntime intra-op threads: ``threads`` if > 0, else OMP_NUM_THREADS (Ray sets it to an actor's
    CPUs), else 0 (onnxruntime's default: one per core)."""
    if threads > 0:
        return threads
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def load_session(path: str, threads: int = 0, user: str = "basic_pitch"):
    """One onnxruntime session per (model file version, threads) per process. Raises CheckpointError when
    the file is not an ONNX model with basic-pitch's input and outputs."""
    ort = import_onnxruntime(user)
    n = resolve_threads(threads)
    key = (*_file_key(path), n)
    if key not in _SESSIONS:
        options = ort.SessionOptions()
        options.intra_op_num_threads = n
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no optimizer chatter on stderr
        try:
            session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
            raise CheckpointError(f"{user}: cannot load ONNX model {path}: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        inputs = {i.name: i.shape for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if list(inputs) != [_INPUT] or list(inputs[_INPUT])[1:] != [WINDOW_SAMPLES, 1] \
                or not set(_OUTPUTS.values()) <= outputs:
            raise CheckpointError(f"{user}: {path} is not basic-pitch's model: input {inputs}, outputs {sorted(outputs)}; "
                                  f"expected input {_INPUT} (batch, {WINDOW_SAMPLES}, 1) and outputs {sorted(_OUTPUTS.values())}")
        _SESSIONS[key] = session
    return _SESSIONS[key]


def check_waveform(audio: np.ndarray, user: str) -> np.ndarray:
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"{user} expects a mono 1-D waveform at {SAMPLE_RATE} Hz, got shape {x.shape}")
    if x.size == 0:
        raise EmptyInputError(None, "zero-length audio")
    if not np.isfinite(x).all():
        raise AudioDecodeError(None, "audio contains NaN or infinite samples")
    return x


def n_output_frames(n_samples: int) -> int:
    """Posteriorgram frames kept for a recording of ``n_samples`` at 22050 Hz (basic-pitch's count, >= 1)."""
    return max(1, (n_samples * NOMINAL_FPS) // SAMPLE_RATE)


def frame_times(n_frames: int) -> np.ndarray:
    """Start of each kept frame in seconds (module docstring); increasing."""
    n = np.arange(n_frames)
    return ((n // KEPT_FRAMES) * HOP_SAMPLES + (n % KEPT_FRAMES) * FFT_HOP) / SAMPLE_RATE


def windows(audio: np.ndarray) -> np.ndarray:
    """(n_windows, 43844, 1) float32: the model's input windows for one recording."""
    padded = np.concatenate([np.zeros(HALF_OVERLAP * FFT_HOP, np.float32), audio])
    n_windows = -(-len(padded) // HOP_SAMPLES)
    tail = (n_windows - 1) * HOP_SAMPLES + WINDOW_SAMPLES - len(padded)
    padded = np.pad(padded, (0, tail))
    view = np.lib.stride_tricks.sliding_window_view(padded, WINDOW_SAMPLES)[::HOP_SAMPLES]
    return np.ascontiguousarray(view[:n_windows])[:, :, None]


def posteriorgrams(session, audio: np.ndarray, user: str = "basic_pitch") -> Posteriorgrams:
    """Run the model over one recording (mono float32 at 22050 Hz). Raises EmptyInputError on zero-length
    audio, AudioDecodeError on non-finite samples."""
    x = check_waveform(audio, user)
    batch = windows(x)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in _OUTPUTS}
    for i in range(0, len(batch), WINDOWS_PER_CALL):
        outs = session.run(list(_OUTPUTS.values()), {_INPUT: batch[i:i + WINDOWS_PER_CALL]})
        for name, out in zip(_OUTPUTS, outs):
            parts[name].append(out[:, HALF_OVERLAP:WINDOW_FRAMES - HALF_OVERLAP])
    n = n_output_frames(len(x))
    grams = {k: np.concatenate(v).reshape(-1, v[0].shape[-1])[:n].astype(np.float32, copy=False) for k, v in parts.items()}
    return Posteriorgrams(times=frame_times(n), **grams)


def import_note_creation(user: str = "basic_pitch_transcriber"):
    """basic-pitch's own note decoding module. Its package logs a warning per absent backend (CoreML,
    TFLite, TensorFlow) on import and resampy warns about pkg_resources: silenced here, nothing else."""
    if importlib.util.find_spec("basic_pitch") is None:
        raise WheelMissingError(user)
    import_onnxruntime(user)  # basic_pitch/__init__.py fails with a NameError when no backend is present
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            try:
                import basic_pitch.note_creation as note_creation
            except ModuleNotFoundError as exc:
                raise MissingDependencyError(user, exc.name or "?", "basic_pitch") from None
    finally:
        logging.disable(previous)
    return note_creation
