"""Embedders and training helpers against independent references and known answers.

* melstats' mel bands against librosa (``librosa.filters.mel``, ``librosa.feature.melspectrogram``)
  with the parameters the module documents, and its documented 0 dB = full-scale sine scaling.
* midi_transformer's frames against ``model.embed`` run directly on chunks built here from the
  tokenizer's raw ids and token names (not through the project's ``tokenize_to_chunks``).
* ``training.visualize.tsne_2d`` (otherwise never run by the tests) on data of known structure.
* Perplexity known answers: ~vocab size for an untrained model, ~1 after training on a one-token
  corpus, and the add-one unigram baseline's closed form.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from embedders.registry import get_embedder
from tests.factory import scale_notes, score_from_notes
from tests.midi_model_factory import tempo_change_score

SR = 22050


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run many times slower with 2 OpenMP threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------ melstats vs librosa
def test_mel_filterbank_is_librosas_slaney_default():
    import librosa

    from embedders.audio.melstats import mel_filterbank

    for n_fft, n_mels, fmin, fmax in ((2048, 64, 30.0, 11025.0), (1024, 40, 0.0, 8000.0)):
        ours = mel_filterbank(SR, n_fft, n_mels, fmin, fmax)                 # (n_fft//2+1, n_mels)
        theirs = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)  # htk=False, slaney
        np.testing.assert_allclose(ours, theirs.T, rtol=1e-5, atol=1e-9)


def _full_scale_peak(librosa, n_fft: int) -> float:
    """|STFT| peak of an amplitude-1 sine on an FFT bin centre: the documented 0 dB reference."""
    t = np.arange(8 * n_fft) / SR
    sine = np.sin(2 * np.pi * (100 * SR / n_fft) * t)
    return float(np.abs(librosa.stft(sine, n_fft=n_fft, hop_length=512, window="hann", center=False)).max())


def test_log_mel_columns_are_windowed_librosa_melspectrogram():
    import librosa
    emb = get_embedder("melstats")          # defaults: n_fft 2048, hop 512, 64 mels, 30 Hz - 11025 Hz
    rng = np.random.default_rng(0)
    t = np.arange(int(2.3 * SR)) / SR
    y = 0.3 * np.sin(2 * np.pi * (220 + 200 * t) * t) + 0.05 * rng.standard_normal(t.size)
    y[: SR // 3] *= 1e-3                    # a quiet start: low bands near the floor, large std across frames
    y = y.astype(np.float32)
    out = emb.embed([y])[0]
    power = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=2048, hop_length=512, window="hann", center=True,
                                           pad_mode="constant", power=2.0, n_mels=64, fmin=30.0, fmax=11025.0)
    # the module's scaling: a full-scale sine peaks at magnitude 1, so power is divided by that peak^2
    db = 10.0 * np.log10(np.maximum(power / _full_scale_peak(librosa, 2048) ** 2, 1e-10))   # (64, n_stft)
    centres = np.arange(db.shape[1]) * 512 / SR                      # STFT frame j is centred on sample j*512
    assert out.shape == (5, emb.dim)                                 # ceil(2.3 s / 0.5 s hop)
    for frame in range(out.shape[0]):
        inside = (centres >= 0.5 * frame) & (centres < 0.5 * frame + 1.0)   # window [t*hop, t*hop + 1 s)
        assert inside.sum() >= 10
        np.testing.assert_allclose(out[frame, :64], db[:, inside].mean(1), atol=1e-3)
        np.testing.assert_allclose(out[frame, 64:128], db[:, inside].std(1), atol=1e-3)
    assert out[:, 64:128].max() > 5.0      # the std columns carry something here (not a trivial match)


# ------------------------------------------------------------------- midi_transformer vs model.embed
def _reference_chunks(tokenizer, score, max_seq_len: int) -> list[list[int]]:
    """The documented chunking, from raw ids and token names: ``[BOS, context, body, EOS]``.

    Each chunk after the first restarts with the TimeSig_ and the Tempo_ in force (the last ones
    seen before its first token; left out when that first token is itself one); a chunk ends at the
    last Bar_ inside its window when that keeps more than half of the window.
    """
    seq = tokenizer.encode(score)
    ids, names = list(seq.ids), list(seq.tokens)
    vocab = tokenizer.vocab
    bos, eos = vocab["BOS_None"], vocab["EOS_None"]
    chunks, start = [], 0
    while start < len(ids):
        prefix = []
        if start > 0:
            for kind in ("TimeSig_", "Tempo_"):
                seen = [i for i, name in zip(ids[:start], names[:start]) if name.startswith(kind)]
                if seen and not names[start].startswith(kind):
                    prefix.append(seen[-1])
        budget = max_seq_len - 2 - len(prefix)
        end = min(len(ids), start + budget)
        if end < len(ids):
            bars = [p for p in range(start + budget // 2 + 1, end + 1) if names[p].startswith("Bar_")]
            end = bars[-1] if bars else end
        chunks.append([bos, *prefix, *ids[start:end], eos])
        start = end
    return chunks


@pytest.fixture(scope="module")
def base_token_checkpoint(tmp_path_factory):
    """Random weights with the project's tokenizer untrained (no BPE: one id per named base token).

    Returns the path and the tokenizer rebuilt from the checkpoint (what the embedder reads; see
    test_checkpoint_keeps_an_untrained_tokenizers_ids for why not the in-memory one)."""
    from embedders.symbolic.midi_transformer.tokenizer import make_tokenizer, special_ids, tokenizer_params
    from embedders.symbolic.midi_transformer.transformer import MIDITransformerConfig, MIDITransformerEncoder, save_checkpoint

    tokenizer = make_tokenizer()
    sp = special_ids(tokenizer)
    config = MIDITransformerConfig(vocab_size=len(tokenizer), max_seq_len=32, embed_dim=16, nhead=2, num_layers=1,
                                   dropout=0.1, pad_id=sp.pad, mask_id=sp.mask, bos_id=sp.bos, eos_id=sp.eos)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mt_base") / "model.pt"
    save_checkpoint(path, MIDITransformerEncoder(config), config, tokenizer_params(tokenizer), {"epoch": 0})
    return path, _checkpoint_tokenizer(path)


def _checkpoint_tokenizer(path):
    import miditok

    from embedders.symbolic.midi_transformer.transformer import load_checkpoint

    params = json.loads(load_checkpoint(path).tokenizer_params)
    params.pop("training_files", None)
    tmp = Path(path).with_suffix(".tokenizer.json")
    tmp.write_text(json.dumps(params))
    return getattr(miditok, params.get("tokenization", "REMI"))(params=tmp)   # MidiTok's own loader


def test_checkpoint_keeps_an_untrained_tokenizers_ids(base_token_checkpoint):
    from embedders.symbolic.midi_transformer.tokenizer import make_tokenizer

    _, rebuilt = base_token_checkpoint
    trained_with = make_tokenizer()
    moved = {t: (i, rebuilt.vocab.get(t)) for t, i in trained_with.vocab.items() if rebuilt.vocab.get(t) != i}
    assert moved == {}


def _direct(model, chunk: list[int]) -> np.ndarray:
    ids = torch.tensor([chunk], dtype=torch.long)
    with torch.no_grad():
        _, pooled = model.embed(ids, torch.ones_like(ids, dtype=torch.bool))
    return pooled[0].numpy()


def test_midi_transformer_frames_are_model_embed_of_each_chunk_in_order(base_token_checkpoint):
    from embedders.symbolic.midi_transformer.transformer import load_checkpoint

    path, tokenizer = base_token_checkpoint
    model = load_checkpoint(path).model.eval()
    emb = get_embedder("midi_transformer", checkpoint=str(path), device="cpu")
    items = [tempo_change_score(n_beats=48), score_from_notes(scale_notes(60, 4)), tempo_change_score(n_beats=32, bpm=70)]
    frames = emb.embed(items)                              # one batch: chunks of all items padded together
    for item, got in zip(items, frames):
        chunks = _reference_chunks(tokenizer, item, 32)
        assert all(len(c) <= 32 for c in chunks)
        expected = np.stack([_direct(model, c) for c in chunks])
        assert got.shape == expected.shape, (got.shape, expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert len(frames[0]) >= 5 and len(frames[1]) == 1     # a long piece in several chunks, a short one in one
    # the chunks differ enough that an order mistake shows
    assert np.abs(np.diff(frames[0], axis=0)).max() > 1e-2


def test_midi_transformer_with_bpe_matches_model_embed_of_the_raw_ids(tmp_path):
    """The pretraining tokenizer (BPE) on a piece that fits one chunk: [BOS] + raw ids + [EOS]."""
    from embedders.symbolic.midi_transformer.transformer import load_checkpoint
    from tests.midi_model_factory import tiny_checkpoint

    path = tiny_checkpoint(tmp_path, max_seq_len=64)
    loaded = load_checkpoint(path)
    tokenizer = _checkpoint_tokenizer(path)
    assert tokenizer.is_trained
    piece = score_from_notes(scale_notes(62, 6), bpm=100)
    raw = list(tokenizer.encode(piece).ids)
    assert len(raw) + 2 <= 64
    chunk = [tokenizer.vocab["BOS_None"], *raw, tokenizer.vocab["EOS_None"]]
    got = get_embedder("midi_transformer", checkpoint=str(path), device="cpu").embed([piece])[0]
    np.testing.assert_allclose(got, _direct(loaded.model.eval(), chunk)[None], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------- t-SNE
def two_clusters(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    X = rng.standard_normal((n, 16)) + 8.0 * labels[:, None]
    return X.astype(np.float32), labels


def test_tsne_keeps_two_separated_clusters_apart_and_is_deterministic():
    from scipy.spatial.distance import cdist

    from training.visualize import tsne_2d

    X, labels = two_clusters()
    coords = tsne_2d(X, seed=0)
    assert coords.shape == (24, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
    D = cdist(coords, coords)
    widest = max(D[np.ix_(labels == c, labels == c)].max() for c in (0, 1))
    assert D[np.ix_(labels == 0, labels == 1)].min() > 2 * widest      # every cross-cluster gap beats any spread
    np.testing.assert_array_equal(tsne_2d(X, seed=0), coords)


def test_tsne_starts_from_the_given_layout_and_handles_tiny_sets():
    from training.visualize import tsne_2d

    X, _ = two_clusters()
    first = tsne_2d(X, seed=0)
    moved = X + 0.05 * np.random.default_rng(1).standard_normal(X.shape).astype(np.float32)
    # documented: each epoch starts from the previous layout, so the map keeps its orientation even
    # when that layout is mirrored (a fresh PCA start would not follow the mirror)
    mirrored = first * np.array([-1.0, 1.0], dtype=np.float32)
    follow = tsne_2d(moved, seed=0, init=mirrored)
    assert np.corrcoef(follow[:, 0], mirrored[:, 0])[0, 1] > 0.9
    assert np.corrcoef(follow[:, 1], mirrored[:, 1])[0, 1] > 0.9
    assert tsne_2d(X[:5], seed=0).shape == (5, 2)        # perplexity scaled below n
    with pytest.raises(ValueError, match="at least 4"):
        tsne_2d(X[:3], seed=0)


# ---------------------------------------------------------------------------- perplexity answers
def _one_token_batch(config, token: int, n: int = 8, length: int = 20) -> dict[str, torch.Tensor]:
    ids = torch.full((n, length), token, dtype=torch.long)
    ids[:, 0], ids[:, -1] = config.bos_id, config.eos_id
    return {"input_ids": ids, "attention_mask": torch.ones((n, length), dtype=torch.bool)}


def test_perplexity_known_answers_untrained_and_one_token_corpus():
    from embedders.symbolic.midi_transformer import transformer as tr
    from training import pretrain_loop as pl

    config = tr.MIDITransformerConfig(vocab_size=40, max_seq_len=32, embed_dim=16, nhead=2, num_layers=1, dropout=0.0)
    torch.manual_seed(0)
    model = tr.MIDITransformerEncoder(config)
    batches = [_one_token_batch(config, 7)]
    # near-zero initial logits: the model guesses uniformly over the vocabulary, perplexity ~ V
    untrained = pl.evaluate(model, batches, "cpu", generator_seed=0)
    assert untrained["perplexity"] == pytest.approx(config.vocab_size, rel=0.1) and untrained["tokens"] > 0
    assert untrained["perplexity"] == pytest.approx(math.exp(untrained["loss"]))
    opt = pl.make_optimizer(model, 1e-2, 0.0)
    for step in range(30):
        pl.train_one_epoch(model, batches, opt, None, "cpu", generator=torch.Generator().manual_seed(step))
    # every masked position holds token 7: a trained model is certain, perplexity ~ 1
    assert pl.evaluate(model, batches, "cpu", generator_seed=0)["perplexity"] < 1.02
    # the add-one unigram baseline: p(7) = (c + 1) / (c + V'), V' = 36 non-special ids
    counts = pl.count_tokens([batches[0]["input_ids"]], config.vocab_size, config.special_ids)
    c = int(counts[7])
    assert c == 8 * 18 and counts.sum() == c
    unigram = pl.unigram_perplexity(counts, batches, mask_id=config.mask_id, special_ids=config.special_ids)
    assert unigram["perplexity"] == pytest.approx((c + 36) / (c + 1), rel=1e-12)
