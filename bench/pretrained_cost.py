"""CPU cost of the pretrained embedders: seconds per minute of audio (openl3, clap, musicnn, basic_pitch)
and per MIDI file (clamp), at forward batch sizes 1 and 16.

    python bench/pretrained_cost.py [--models openl3,clap,clamp,musicnn,basic_pitch] [--batch_sizes 1,16] [--threads 1]
                                    [--audio_seconds 60] [--midi_source data/raw/music21] [--midi_files 16]

The models are the real architectures at their published sizes (openl3: mel256/music/512;
clap: HTSAT-tiny, the default 630k-audioset-best.pt; clamp: CLaMP 3's 12-layer, 768-d symbolic
encoder) with seeded random weights, written in each model's published checkpoint format and
loaded through the embedder, exactly as real weights are: cost does not depend on weight values.
musicnn runs its real weights (MTT_musicnn, from the musicnn wheel), penultimate layer, 3 s patches
at its default 3 s hop.

Batch size is the embedder's ``batch_size`` option, i.e. windows (openl3: 1 s windows at the 0.5 s
hop; clap: 10 s windows; musicnn: 3 s patches) or 512-patch segments (clamp) per forward pass. When one recording has
fewer windows than a batch, one call embeds enough copies of it to fill the batch, so batch 16
means full batches of 16. ``cpu_s`` is this process's CPU time (all torch threads) and ``wall_s``
the elapsed time, each the median over ``--repeats`` after one warm-up call; with ``--threads 1``
the two agree unless other tenants compete for the core. Prints one JSON object.

basic_pitch runs its real weights (the ONNX model in the basic-pitch wheel) through onnxruntime with
``--threads`` intra-op threads; it has no batch size (one recording's windows go in one call), so it
reports the embedder (posteriorgrams + pooling) and the transcriber (posteriorgrams + basic-pitch's
note decoding, on a rendered piano excerpt looped to ``--audio_seconds``) once each.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import finish, machine, midi_files, stdout_to_stderr  # noqa: E402

CLAMP_REAL = {"hidden_size": 768, "num_layers": 12, "patch_size": 64, "max_patches": 512, "projection_dim": 768}


def music_like(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """A mono float32 signal with tones, onsets and noise (the conv nets' cost ignores content)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    freqs = 110.0 * 2 ** (rng.integers(0, 36, size=8) / 12)
    wave = sum(np.sin(2 * np.pi * f * t) * (0.5 + 0.5 * np.sign(np.sin(2 * np.pi * (k + 1) * 0.5 * t)))
               for k, f in enumerate(freqs))
    wave = wave / len(freqs) + 0.01 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def timed(fn, repeats: int) -> dict[str, float]:
    fn()  # warm-up: first-call allocations and kernel selection
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall)}


def audio_cost(name: str, options: dict[str, Any], batch_sizes: list[int], audio_seconds: float,
               repeats: int) -> dict[str, Any]:
    from embedders.registry import get_embedder

    rows = {}
    for batch in batch_sizes:
        embedder = get_embedder(name, device="cpu", batch_size=batch, **options)
        wave = music_like(audio_seconds, embedder.sample_rate)
        windows = len(embedder.embed([wave])[0])
        copies = max(1, math.ceil(batch / windows))  # enough windows in one call for a full batch
        cost = timed(lambda e=embedder, w=wave, c=copies: e.embed([w] * c), repeats)  # called here, bound anyway
        minutes = copies * audio_seconds / 60.0
        rows[str(batch)] = {"cpu_s_per_audio_minute": round(cost["cpu_s"] / minutes, 3),
                            "wall_s_per_audio_minute": round(cost["wall_s"] / minutes, 3),
                            "windows_per_call": windows * copies, "audio_seconds_per_call": copies * audio_seconds}
    return {"config": {k: v for k, v in options.items() if k != "checkpoint"}, "by_batch_size": rows}


def clamp_cost(checkpoint: Path, files: list[Path], batch_sizes: list[int], repeats: int) -> dict[str, Any]:
    from embedders.registry import get_embedder

    data = [f.read_bytes() for f in files]  # the pipeline hands clamp the original file bytes
    rows = {}
    for batch in batch_sizes:
        embedder = get_embedder("clamp", checkpoint=str(checkpoint), device="cpu", batch_size=batch, **CLAMP_REAL)
        segments = sum(len(v) for v in embedder.embed(data))
        cost = timed(lambda e=embedder: e.embed(data), repeats)
        rows[str(batch)] = {"cpu_s_per_file": round(cost["cpu_s"] / len(data), 3),
                            "wall_s_per_file": round(cost["wall_s"] / len(data), 3),
                            "files_per_call": len(data), "segments_per_call": segments}
    return {"config": CLAMP_REAL, "by_batch_size": rows}


def basic_pitch_cost(audio_seconds: float, threads: int, repeats: int) -> dict[str, Any]:
    """CPU seconds per audio minute of the basic_pitch embedder and transcriber (module docstring)."""
    from embedders.io import resample
    from embedders.registry import get_embedder
    from embedders.transcribe import get_transcriber
    from tests.pretrained_factories.basic_pitch import piano_excerpt

    _, piano, sr = piano_excerpt()
    piano = resample(piano, sr, 22050)
    wave = np.resize(piano, int(audio_seconds * 22050))  # the excerpt looped
    embedder = get_embedder("basic_pitch", threads=threads)
    transcriber = get_transcriber("basic_pitch", threads=threads)
    minutes = audio_seconds / 60.0
    embed = timed(lambda: embedder.embed([wave]), repeats)
    notes = []
    trans = timed(lambda: notes.append(len(transcriber.transcribe(wave).notes)), repeats)
    return {"weights": "real (basic-pitch 0.4.0 wheel, ONNX)", "config": embedder.describe()["config"],
            "embed": {k.replace("_s", "_s_per_audio_minute"): round(v / minutes, 3) for k, v in embed.items()},
            "transcribe": {k.replace("_s", "_s_per_audio_minute"): round(v / minutes, 3) for k, v in trans.items()},
            "audio_seconds_per_call": audio_seconds, "notes_transcribed": notes[-1]}


def musicnn_cost(batch_sizes: list[int], audio_seconds: float, repeats: int) -> dict[str, Any]:
    """musicnn with its real weights (the wheel's MTT_musicnn): no checkpoint to write."""
    out = audio_cost("musicnn", {"model": "MTT_musicnn", "layer": "penultimate"}, batch_sizes, audio_seconds, repeats)
    out["weights"] = "real: MTT_musicnn from the musicnn 0.1.0 wheel"
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="openl3,clap,clamp,musicnn,basic_pitch")
    p.add_argument("--batch_sizes", default="1,16")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU seconds = wall seconds)")
    p.add_argument("--audio_seconds", type=float, default=60.0)
    p.add_argument("--midi_source", type=Path, default=Path("data/raw/music21"))
    p.add_argument("--midi_files", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    result: dict[str, Any] = {"benchmark": "pretrained_cost", "machine": machine(), "threads": args.threads,
                              "weights": "seeded random, real architecture and size, published file format"}
    with tempfile.TemporaryDirectory() as tmp, stdout_to_stderr():
        tmp = Path(tmp)
        if "openl3" in models:
            from tests.pretrained_factories import openl3 as factory

            options = {"input_repr": "mel256", "content_type": "music", "embedding_size": 512}
            ckpt = factory.write_weights(tmp, **options)
            result["openl3"] = audio_cost("openl3", {"checkpoint": str(ckpt), **options}, batch_sizes,
                                          args.audio_seconds, args.repeats)
        if "clap" in models:
            from tests.pretrained_factories import clap as factory

            ckpt = factory.write_checkpoint(tmp / factory.PUBLISHED_NAME)
            result["clap"] = audio_cost("clap", {"checkpoint": str(ckpt)}, batch_sizes, args.audio_seconds,
                                        args.repeats)
        if "clamp" in models:
            from tests.pretrained_factories import clamp as factory

            ckpt = factory.write_checkpoint(tmp / factory.PUBLISHED_NAME, options=CLAMP_REAL)
            files = midi_files(args.midi_source, args.midi_files, 0, flag="--midi_source")
            result["clamp"] = clamp_cost(ckpt, files, batch_sizes, args.repeats)
        if "basic_pitch" in models:
            result["basic_pitch"] = basic_pitch_cost(args.audio_seconds, args.threads, args.repeats)
        if "musicnn" in models:
            result["musicnn"] = musicnn_cost(batch_sizes, args.audio_seconds, args.repeats)
    finish(result)


if __name__ == "__main__":
    main()
