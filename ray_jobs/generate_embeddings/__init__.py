"""Embed every recording of a paired dataset in both media, on Ray Data; consolidate embeddings.h5."""
