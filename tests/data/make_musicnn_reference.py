"""Make tests/data/musicnn_reference.npz: outputs of the ORIGINAL musicnn package (TensorFlow) on fixed inputs.

Run once, outside the project's environment (TensorFlow conflicts with the project's pins and must
never be installed into its venv); the committed .npz is what tests/test_musicnn.py compares with:

    python3.11 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install "tensorflow==2.21.*" tf_keras librosa==0.11.0
    /tmp/tfenv/bin/pip install --no-deps musicnn==0.1.0   # its metadata pins numpy<1.17
    TF_USE_LEGACY_KERAS=1 /tmp/tfenv/bin/python tests/data/make_musicnn_reference.py

musicnn's layers are ``tf.compat.v1.layers``, which TensorFlow >= 2.16 serves only from tf_keras
(``TF_USE_LEGACY_KERAS=1``). Made with tensorflow 2.21.0, tf_keras 2.21.0, librosa 0.11.0, numpy 2.4.6,
soundfile 0.14.0, musicnn 0.1.0 (versions are also stored in the file).

Contents, for each model in MODELS (keys ``<model>__<input>__<output>``):

- ``random``: the network (musicnn.models.define_model, restored with tf.train.Saver from the
  wheel's checkpoint, eval mode) on ``reference_patches()``, float32 log-mel patches made from a
  seed in this file (the test regenerates them; ``random__sha256`` guards that they are the same
  bytes). Outputs: taggram (sigmoid), penultimate, mean_pool, max_pool, as musicnn.extractor names them.
- ``<wave>``: musicnn.extractor.extractor(wav, model, input_length=3, input_overlap=False) on each of
  ``reference_waveforms()`` written as float32 WAV at 16 kHz, i.e. the original front end (librosa
  mel, cast to float16, log10(10000 x + 1)) and non-overlapping 187-frame patches; plus
  ``logmel__<wave>`` (the same for both models): musicnn.extractor.batch_data's log-mel, float16 as
  the original holds it. The ``loud`` wave overflows float16 (inf in the log-mel). extractor() reports
  the first patch's penultimate for every later patch (a stale variable in its loop), so
  ``<model>__<wave>__network__<output>`` also holds the network's outputs on batch_data's patches.

Only numpy is imported at module level, so the test can import the input generators.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile

import numpy as np

SR = 16000
N_FRAMES, N_MELS = 187, 96
MODELS = ("MTT_musicnn", "MSD_musicnn")
OUTPUTS = ("taggram", "penultimate", "mean_pool", "max_pool")
OUT_NAME = "musicnn_reference.npz"


def reference_patches() -> np.ndarray:
    """(6, 187, 96) float32 log-mel patches: random levels, a random walk, silence, values beyond
    what float16 allows (up to 6.5), a harmonic pattern and sparse onsets."""
    rng = np.random.default_rng(20240517)
    t = np.arange(N_FRAMES, dtype=np.float64)[:, None]
    m = np.arange(N_MELS, dtype=np.float64)[None, :]
    walk = np.clip(np.cumsum(rng.normal(0.0, 0.15, (N_FRAMES, N_MELS)), axis=0) + 2.0, 0.0, 4.5)
    harmonic = 2.0 + 1.5 * np.sin(2 * np.pi * m / 12.0) * np.cos(2 * np.pi * t / 47.0) * np.exp(-m / 60.0)
    sparse = np.where(rng.random((N_FRAMES, N_MELS)) < 0.05, rng.uniform(1.0, 4.0, (N_FRAMES, N_MELS)), 0.0)
    patches = np.stack([rng.uniform(0.0, 4.0, (N_FRAMES, N_MELS)), walk, np.zeros((N_FRAMES, N_MELS)),
                        rng.uniform(3.0, 6.5, (N_FRAMES, N_MELS)), harmonic, sparse])
    return patches.astype(np.float32)


def patches_sha256(patches: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(patches, dtype="<f4").tobytes()).hexdigest()


def _chords(seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    out = np.zeros_like(t)
    for k, root in enumerate((220.0, 261.63, 196.0, 246.94, 293.66, 174.61, 329.63)):
        start = k * 0.9
        env = np.where(t >= start, np.exp(-(t - start) * 1.5), 0.0)
        for ratio, weight in ((1.0, 1.0), (1.26, 0.7), (1.5, 0.6), (2.0, 0.3), (3.0, 0.15)):
            out += weight * env * np.sin(2 * np.pi * root * ratio * (t - start))
    return (amplitude * out / np.abs(out).max()).astype(np.float32)


def reference_waveforms() -> dict[str, np.ndarray]:
    """Mono float32 waveforms at 16 kHz: ``chords`` (6.5 s, 2 patches) and ``noise`` (3.5 s) are
    quiet enough that the original's float16 log-mel stays finite; ``loud`` (3.5 s) is not."""
    rng = np.random.default_rng(7)
    red = np.cumsum(rng.standard_normal(int(3.5 * SR))) * 5e-4  # energy in the low bands, without drift
    noise = (red - np.convolve(red, np.ones(400) / 400, mode="same") + 0.003 * rng.standard_normal(red.size))
    return {"chords": _chords(6.5, 0.1), "noise": noise.astype(np.float32), "loud": _chords(3.5, 0.5)}


def _network_outputs(model: str, patches: np.ndarray) -> dict[str, np.ndarray]:
    import musicnn
    import tensorflow as tf
    from musicnn import models

    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):  # as musicnn.extractor builds it
        x = tf.compat.v1.placeholder(tf.float32, [None, N_FRAMES, N_MELS])
        is_training = tf.compat.v1.placeholder(tf.bool)
        y, _, _, _, _, _, mean_pool, max_pool, penultimate = models.define_model(x, is_training, model, 50)
        taggram = tf.nn.sigmoid(y)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        tf.compat.v1.train.Saver().restore(sess, os.path.join(os.path.dirname(musicnn.__file__), model) + "/")
        values = sess.run([taggram, penultimate, mean_pool, max_pool], feed_dict={x: patches, is_training: False})
    return dict(zip(OUTPUTS, values))


def main() -> None:
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        sys.exit("set TF_USE_LEGACY_KERAS=1 (musicnn's tf.compat.v1.layers need tf_keras on TensorFlow >= 2.16)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from importlib.metadata import version

    import soundfile as sf
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    from musicnn.extractor import batch_data, extractor

    patches = reference_patches()
    out: dict[str, np.ndarray] = {"random__sha256": np.array(patches_sha256(patches))}
    for package in ("tensorflow", "tf_keras", "librosa", "numpy", "soundfile", "musicnn"):
        out[f"version__{package}"] = np.array(version(package))
    with tempfile.TemporaryDirectory() as tmp:
        for wave_name, wave in reference_waveforms().items():
            path = os.path.join(tmp, f"{wave_name}.wav")
            sf.write(path, wave, SR, subtype="FLOAT")  # float32 WAV: the samples round-trip exactly
            batch, logmel = batch_data(path, N_FRAMES, N_FRAMES)
            out[f"logmel__{wave_name}"] = logmel
            for model in MODELS:
                taggram, _, features = extractor(path, model=model, input_length=3, input_overlap=False)
                out[f"{model}__{wave_name}__taggram"] = taggram
                for name in OUTPUTS[1:]:
                    out[f"{model}__{wave_name}__{name}"] = features[name]
                # extractor() repeats the first patch's penultimate for later patches (its loop appends
                # a stale variable), so the network's own outputs on the same patches are kept too
                for name, value in _network_outputs(model, batch.astype(np.float32)).items():
                    out[f"{model}__{wave_name}__network__{name}"] = value
    for model in MODELS:
        for name, value in _network_outputs(model, patches).items():
            out[f"{model}__random__{name}"] = value
    target = os.path.join(os.path.dirname(os.path.abspath(__file__)), OUT_NAME)
    np.savez_compressed(target, **out)
    print(f"wrote {target} ({os.path.getsize(target)} bytes):")
    for key, value in out.items():
        print(f"  {key}: {value.dtype} {value.shape}")


if __name__ == "__main__":
    main()
