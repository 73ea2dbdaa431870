"""Tiny MIDI-transformer artefacts made in code: multi-bar MIDI files, a trained tokenizer, a checkpoint.

The checkpoint is written by the real ``training.transformer.save_checkpoint`` (the model's true
format), with random weights: tests check plumbing and invariances, not musical quality.
"""

from __future__ import annotations

from pathlib import Path

from tests.factory import scale_notes, score_from_notes

TPQ = 480


def tempo_change_score(n_beats: int = 48, bpm: float = 90.0, bpm_later: float = 160.0, change_beat: int = 24,
                       root: int = 55, program: int = 0):
    """A scale in 4/4 that switches to 3/4 and to ``bpm_later`` at ``change_beat`` (a bar line in both metres)."""
    import symusic

    score = score_from_notes(scale_notes(root, n_beats, 1.0), bpm=bpm, tpq=TPQ, program=program)
    score.tempos.append(symusic.Tempo(change_beat * TPQ, qpm=bpm_later))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    score.time_signatures.append(symusic.TimeSignature(change_beat * TPQ, 3, 4))
    return score


def write_tiny_midis(folder, n: int = 6) -> list[Path]:
    """``n`` multi-bar files with tempo and time-signature changes; different keys, tempi, lengths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        score = tempo_change_score(n_beats=24 + 8 * (k % 3), bpm=80 + 15 * k, bpm_later=150 - 10 * k,
                                   change_beat=12, root=48 + (5 * k) % 12, program=[0, 40, 73][k % 3])
        path = folder / f"tiny{k}.mid"
        score.dump_midi(str(path))
        paths.append(path)
    return paths


def tiny_tokenizer(folder, vocab_size: int = 600):
    """A BPE tokenizer trained on the tiny files, saved as ``folder/tokenizer.json``."""
    from embedders.symbolic.midi_transformer.tokenizer import load_or_train_tokenizer

    folder = Path(folder)
    files = write_tiny_midis(folder / "midi")
    return load_or_train_tokenizer(folder / "tokenizer.json", files, vocab_size)


def tiny_checkpoint(folder, embed_dim: int = 32, num_layers: int = 1, nhead: int = 2, max_seq_len: int = 32,
                    seed: int = 0) -> Path:
    """Random-weight MIDITransformerEncoder + tiny tokenizer, saved as ``folder/model.pt``."""
    import torch

    from embedders.symbolic.midi_transformer.tokenizer import special_ids, tokenizer_params, vocab_size
    from embedders.symbolic.midi_transformer.transformer import MIDITransformerConfig, MIDITransformerEncoder, save_checkpoint

    folder = Path(folder)
    tokenizer = tiny_tokenizer(folder)
    sp = special_ids(tokenizer)
    config = MIDITransformerConfig(vocab_size=vocab_size(tokenizer), max_seq_len=max_seq_len, embed_dim=embed_dim,
                                   nhead=nhead, num_layers=num_layers, dropout=0.1, pad_id=sp.pad, mask_id=sp.mask,
                                   bos_id=sp.bos, eos_id=sp.eos)
    torch.manual_seed(seed)
    model = MIDITransformerEncoder(config)
    return save_checkpoint(folder / "model.pt", model, config, tokenizer_params(tokenizer), {"epoch": 0})
