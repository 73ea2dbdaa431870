"""Classifier sweeps per label and medium with Ray Tune, tracked in MLflow; the audio-vs-symbolic answer."""
