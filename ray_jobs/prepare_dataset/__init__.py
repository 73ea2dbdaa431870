"""Build a real paired dataset in the seed format from the music21 corpus (a Ray Data job)."""
