"""Pretrain the MIDI transformer encoder on a paired dataset's MIDI files, with Ray Train (DDP)."""
