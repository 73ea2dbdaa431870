"""``melstats``: a weight-free, deterministic audio embedder of windowed spectral statistics.

Input: mono float32 waveforms at 22050 Hz. An STFT (periodic Hann, ``n_fft`` = 2048, hop 512,
centred: the signal is zero-padded by n_fft/2 on both sides, so STFT frame j is centred on sample
j * 512) is scaled so that a full-scale sine gives a peak bin magnitude of 1 (0 dB). Output frame t
covers [t * hop_seconds, t * hop_seconds + window_seconds) (``FrameGrid``, default hop 0.5 s,
window 1.0 s) and summarises the STFT frames whose centres fall in that span; the last frames use
what exists, and a frame holding no centre (a tail shorter than one STFT hop) uses the last STFT
frame. T = FrameGrid.n_frames(len(audio) / 22050).

Mel filterbank: Slaney mel scale (linear below 1 kHz, logarithmic above) with Slaney area
normalisation, as librosa's default (``htk=False, norm="slaney"``). Chroma: each FFT bin between
``chroma_fmin`` and ``chroma_fmax`` gives its power to pitch classes by a triangle in semitones of
half-width max(0.75, bin spacing in semitones), weights summing to 1 per bin. dB values are
10*log10(max(power, 1e-10)), so -100 dB is the floor.

Columns with the default n_mels = 64 (D = 2 * n_mels + 33 = 161):

======== ==============================================================================
cols     feature
======== ==============================================================================
0-63     log-mel band mean over the window (dB)
64-127   log-mel band std over the window (dB)
128-139  chroma C, C#, ..., B: power summed over the window, L1-normalised (zeros if silent)
140-146  spectral contrast mean (dB), 7 bands: 0-200, 200-400, ..., 3.2-6.4 kHz, 6.4 kHz-Nyquist
147-160  mean, std of: centroid (kHz), bandwidth (kHz), rolloff 85% (kHz), flatness (0..1),
         flux (mean positive log-mel change, dB), RMS (dBFS, floor -100), zero-crossing rate
======== ==============================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from embedders.base import PITCH_CLASSES, AudioDecodeError, ConfigError, Embedder, EmbedderConfig, EmptyInputError, FrameGrid
from embedders.registry import register

_AMIN = 1e-10
_SCALARS = ("centroid_khz", "bandwidth_khz", "rolloff_khz", "flatness", "flux_db", "rms_db", "zcr")
_CONTRAST_EDGES = (0.0, 200.0, 400.0, 800.0, 1600.0, 3200.0, 6400.0, np.inf)
# STFT frames per chunk: bounds memory (~100 MB) on hour-long inputs without slowing short ones.
_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class MelStatsConfig(EmbedderConfig):
    hop_seconds: float = 0.5
    window_seconds: float = 1.0
    n_fft: int = 2048
    stft_hop: int = 512
    n_mels: int = 64
    fmin: float = 30.0
    fmax: float = 11025.0
    chroma_fmin: float = 65.4  # C2: below it a 2048-point bin spans several semitones
    chroma_fmax: float = 4186.0  # C8

    def __post_init__(self) -> None:
        FrameGrid(self.hop_seconds, self.window_seconds)  # validates both
        if self.n_fft < 16 or self.stft_hop < 1 or self.n_mels < 1:
            raise ConfigError(f"melstats: bad STFT settings n_fft={self.n_fft} stft_hop={self.stft_hop} n_mels={self.n_mels}")
        if not 0 <= self.fmin < self.fmax <= MelStats.sample_rate / 2:
            raise ConfigError(f"melstats: need 0 <= fmin < fmax <= {MelStats.sample_rate / 2}, got {self.fmin}, {self.fmax}")
        if not 0 < self.chroma_fmin < self.chroma_fmax:
            raise ConfigError("melstats: need 0 < chroma_fmin < chroma_fmax")


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000.0, f * 3.0 / 200.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) * 27.0 / np.log(6.4))


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return np.where(m < 15.0, m * 200.0 / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_fft//2+1, n_mels) Slaney-scale, Slaney-normalised triangles (librosa's default)."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lower = (freqs[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    upper = (edges[2:, None] - freqs[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return np.ascontiguousarray(weights.T, dtype=np.float32)


def chroma_filterbank(sr: int, n_fft: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_fft//2+1, 12) soft pitch-class assignment of FFT bins; rows sum to 1 inside [fmin, fmax]."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    inside = (freqs >= fmin) & (freqs <= fmax)
    f = np.where(inside, freqs, 440.0)
    midi = 69.0 + 12.0 * np.log2(f / 440.0)
    # 0.75 semitone keeps neighbouring classes apart yet leaves no bin without weight (needs > 0.5).
    half_width = np.maximum(0.75, 12.0 * np.log2(1.0 + (sr / n_fft) / f))
    dist = (midi[:, None] - np.arange(12)[None, :] + 6.0) % 12.0 - 6.0
    w = np.maximum(0.0, 1.0 - np.abs(dist) / half_width[:, None])
    w /= w.sum(axis=1, keepdims=True)
    return np.ascontiguousarray(w * inside[:, None], dtype=np.float32)


@register
class MelStats(Embedder):
    name: ClassVar[str] = "melstats"
    modality: ClassVar[str] = "audio"
    sample_rate: ClassVar[int] = 22050
    Config: ClassVar[type[EmbedderConfig]] = MelStatsConfig
    #: Output width for the default config (n_mels = 64); an instance with another n_mels refines it.
    dim = 2 * 64 + 12 + 7 + 2 * len(_SCALARS)
    default_batch_size: ClassVar[int] = 16

    @classmethod
    def output_dim(cls, config: MelStatsConfig) -> int:
        return 2 * config.n_mels + 12 + 7 + 2 * len(_SCALARS)

    def __init__(self, config: MelStatsConfig | None = None):
        super().__init__(config)
        c: MelStatsConfig = self.config  # type: ignore[assignment]
        self.grid = FrameGrid(c.hop_seconds, c.window_seconds)
        self.hop_seconds = c.hop_seconds
        sr = self.sample_rate
        self._window = np.hanning(c.n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
        self._scale = np.float32(2.0 / self._window.sum())
        self._melfb = mel_filterbank(sr, c.n_fft, c.n_mels, c.fmin, c.fmax)
        self._chromafb = chroma_filterbank(sr, c.n_fft, c.chroma_fmin, c.chroma_fmax)
        self._freqs_khz = (np.fft.rfftfreq(c.n_fft, 1.0 / sr) / 1000.0).astype(np.float32)
        bands = np.digitize(np.fft.rfftfreq(c.n_fft, 1.0 / sr), _CONTRAST_EDGES[1:-1])
        self._bands = [(int(np.argmax(bands == b)), int(np.flatnonzero(bands == b)[-1]) + 1) for b in range(7)]

    @classmethod
    def feature_names(cls, n_mels: int = 64) -> list[str]:
        names = [f"logmel_mean_{i}" for i in range(n_mels)] + [f"logmel_std_{i}" for i in range(n_mels)]
        names += [f"chroma_{p}" for p in PITCH_CLASSES] + [f"contrast_{b}" for b in range(7)]
        return names + [f"{s}_{stat}" for s in _SCALARS for stat in ("mean", "std")]

    def _frame_features(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per STFT frame: log-mel (n, M), chroma power (n, 12), contrast (n, 7), spectral (n, 4)."""
        import scipy.fft  # here, not at module level: importing the registry stays cheap

        spec = scipy.fft.rfft(frames * self._window, axis=1, workers=1)  # float32 in, complex64 out
        power = (spec.real**2 + spec.imag**2) * self._scale**2
        mag = np.sqrt(power)
        logmel = 10.0 * np.log10(np.maximum(power @ self._melfb, _AMIN))
        chroma = power @ self._chromafb
        total = mag.sum(axis=1)
        safe = np.maximum(total, _AMIN)
        centroid = (mag @ self._freqs_khz) / safe
        bandwidth = np.sqrt(np.maximum((mag @ self._freqs_khz**2) / safe - centroid**2, 0.0))
        cum = np.cumsum(mag, axis=1)
        rolloff = self._freqs_khz[np.argmax(cum >= 0.85 * cum[:, -1:], axis=1)]
        logp = np.log(np.maximum(power, _AMIN))
        flatness = np.exp(logp.mean(axis=1)) / np.maximum(power, _AMIN).mean(axis=1)
        contrast = np.empty((len(frames), len(self._bands)), dtype=np.float32)
        for b, (lo, hi) in enumerate(self._bands):
            k = max(1, int(round(0.02 * (hi - lo))))
            band = np.sort(mag[:, lo:hi], axis=1)  # SIMD sort: faster than a two-sided partition
            peak, valley = band[:, -k:].mean(axis=1), band[:, :k].mean(axis=1)
            contrast[:, b] = 10.0 * (np.log10(np.maximum(peak, _AMIN)) - np.log10(np.maximum(valley, _AMIN)))
        spectral = np.stack([centroid, bandwidth, rolloff, flatness], axis=1)
        return logmel, chroma, contrast, spectral

    def _embed_one(self, audio: np.ndarray) -> np.ndarray:
        c: MelStatsConfig = self.config  # type: ignore[assignment]
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"melstats expects a mono 1-D waveform, got shape {x.shape}")
        if x.size == 0:
            raise EmptyInputError(None, "zero-length audio")
        if not np.isfinite(x).all():
            raise AudioDecodeError(None, "audio contains NaN or infinite samples")
        pad = c.n_fft // 2
        xp = np.pad(x, (pad, pad))
        n = 1 + len(x) // c.stft_hop
        view = np.lib.stride_tricks.sliding_window_view(xp, c.n_fft)[:: c.stft_hop][:n]
        parts = [self._frame_features(view[i : i + _CHUNK]) for i in range(0, n, _CHUNK)]
        logmel, chroma, contrast, spectral = (np.concatenate(p, axis=0) for p in zip(*parts))
        # RMS and zero crossings of the unwindowed frame, from prefix sums over the padded signal.
        lo = np.arange(n) * c.stft_hop
        energy = np.concatenate([[0.0], np.cumsum(xp.astype(np.float64) ** 2)])
        rms = np.sqrt(np.maximum(energy[lo + c.n_fft] - energy[lo], 0.0) / c.n_fft)
        crossings = np.concatenate([[0], np.cumsum(np.signbit(xp[1:]) != np.signbit(xp[:-1]))])
        zcr = (crossings[lo + c.n_fft - 1] - crossings[lo]) / (c.n_fft - 1)
        flux = np.concatenate([[0.0], np.maximum(np.diff(logmel, axis=0), 0.0).mean(axis=1)])
        scalars = np.column_stack([spectral, flux, 20.0 * np.log10(np.maximum(rms, 1e-5)), zcr])

        n_out = self.grid.n_frames(len(x) / self.sample_rate)
        idx, mask = self.grid.window_index(n, n_out, c.stft_hop / self.sample_rate)
        stats = np.concatenate([logmel, contrast, scalars], axis=1).astype(np.float64)
        chroma64 = chroma.astype(np.float64)
        # Output frames in chunks so the (T, L, K) gather stays small on hour-long inputs.
        out = np.concatenate(
            [self._aggregate(stats, chroma64, idx[i : i + _CHUNK], mask[i : i + _CHUNK]) for i in range(0, n_out, _CHUNK)]
        )
        return out.astype(np.float32)

    def _aggregate(self, stats: np.ndarray, chroma: np.ndarray, idx: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = self.config.n_mels  # type: ignore[attr-defined]
        k = m + len(self._bands)
        w = mask[:, :, None].astype(np.float64)
        count = w.sum(axis=1)
        g = stats[idx]  # (T, L, K)
        mean = (g * w).sum(axis=1) / count
        std = np.sqrt((((g - mean[:, None, :]) * w) ** 2).sum(axis=1) / count)
        chroma_sum = (chroma[idx] * w).sum(axis=1)
        total = chroma_sum.sum(axis=1, keepdims=True)
        chroma_norm = np.where(total > _AMIN, chroma_sum / np.maximum(total, _AMIN), 0.0)
        scal = np.stack([mean[:, k:], std[:, k:]], axis=2).reshape(len(idx), -1)  # mean, std interleaved
        return np.concatenate([mean[:, :m], std[:, :m], chroma_norm, mean[:, m:k], scal], axis=1)

    def embed(self, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        # One item at a time: no padding or shared state, so outputs never depend on the batch.
        return [self.check_output(None, self._embed_one(a)) for a in items]
