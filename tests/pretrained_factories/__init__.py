"""Checkpoints in pretrained models' published formats, built in code with random weights for tests."""
