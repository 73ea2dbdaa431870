"""Train a classifier on stored embeddings: the seed's `python -m src.main`, same flags and outputs."""
