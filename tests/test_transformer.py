"""MIDITransformerEncoder, masking, the pretraining loop, checkpoints, the unigram baseline, the embedder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embedders.base import CheckpointError
from embedders.registry import get_embedder
from embedders.symbolic.midi_transformer import transformer as tr
from tests.factory import scale_notes, score_from_notes
from tests.midi_model_factory import tempo_change_score, tiny_checkpoint
from training import pretrain_loop as pl

SPECIAL = (0, 1, 2, 3)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run 10-30x slower with 2 OpenMP threads on a shared 2-core machine (spinning threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**kw) -> tr.MIDITransformerConfig:
    base = dict(vocab_size=40, max_seq_len=64, embed_dim=32, nhead=2, num_layers=2, dropout=0.0)
    return tr.MIDITransformerConfig(**{**base, **kw})


def random_batch(n: int = 4, length: int = 24, vocab: int = 40, seed: int = 0) -> dict[str, torch.Tensor]:
    """BOS + random non-special tokens + EOS, right-padded to different lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros((n, length), dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.bool)
    for r in range(n):
        k = length - 5 * r if length - 5 * r > 4 else length
        ids[r, :k] = torch.randint(4, vocab, (k,), generator=g)
        ids[r, 0], ids[r, k - 1] = 1, 2
        mask[r, :k] = True
    return {"input_ids": ids, "attention_mask": mask}


# -- model -----------------------------------------------------------------------------------------
def test_shapes_and_padding_does_not_change_real_positions():
    torch.manual_seed(0)
    model = tr.MIDITransformerEncoder(tiny_config()).eval()
    batch = random_batch()
    logits = model(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (4, 24, 40)
    seq, pooled = model.embed(batch["input_ids"], batch["attention_mask"])
    assert seq.shape == (4, 24, 32) and pooled.shape == (4, 32)
    selected = model(batch["input_ids"], batch["attention_mask"], batch["attention_mask"])
    assert selected.shape == (int(batch["attention_mask"].sum()), 40)
    for r in range(4):  # each row alone, unpadded, gives the same pooled vector
        k = int(batch["attention_mask"][r].sum())
        _, alone = model.embed(batch["input_ids"][r:r + 1, :k], batch["attention_mask"][r:r + 1, :k])
        torch.testing.assert_close(alone[0], pooled[r], rtol=1e-5, atol=1e-6)
    with torch.inference_mode():  # the inference fast path too
        _, fast = model.embed(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(fast, pooled, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.ones((1, 65), dtype=torch.long), torch.ones((1, 65), dtype=torch.bool))


def test_mask_tokens_bert_style():
    batch = random_batch(n=8, length=400, seed=1)
    ids, attn = batch["input_ids"], batch["attention_mask"]
    masked, labels = tr.mask_tokens(ids, attn, 3, 40, SPECIAL, 0.15, torch.Generator().manual_seed(0))
    picked = labels != -100
    assert not picked[~attn].any() and not picked[(ids == 1) | (ids == 2) | (ids == 0)].any()
    assert torch.equal(labels[picked], ids[picked]) and torch.equal(masked[~picked], ids[~picked])
    eligible = attn & (ids > 3)
    rate = picked.sum().item() / eligible.sum().item()
    assert 0.12 < rate < 0.18
    n = picked.sum().item()
    to_mask = (masked[picked] == 3).sum().item() / n
    unchanged = (masked[picked] == ids[picked]).sum().item() / n
    assert 0.72 < to_mask < 0.88 and 0.05 < unchanged < 0.16
    assert (masked[picked] >= 3).all()  # replacements are MASK or a non-special token, never PAD/BOS/EOS
    again, labels2 = tr.mask_tokens(ids, attn, 3, 40, SPECIAL, 0.15, torch.Generator().manual_seed(0))
    assert torch.equal(again, masked) and torch.equal(labels2, labels)
    short = random_batch(n=2, length=5)  # 3 eligible tokens: 15% often picks none, yet one is masked
    _, lab = tr.mask_tokens(short["input_ids"], short["attention_mask"], 3, 40, SPECIAL, 0.15,
                            torch.Generator().manual_seed(3))
    assert ((lab != -100).sum(1) >= 1).all()


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = tr.MIDITransformerEncoder(tiny_config(dropout=0.1))
    batch = random_batch(n=4, length=32, seed=2)
    opt = pl.make_optimizer(model, lr=3e-3, weight_decay=0.01)
    losses = []
    for _ in range(100):  # the same batch AND the same masks every step: pure memorisation
        out = tr.mlm_loss(model, batch, torch.Generator().manual_seed(0))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_train_and_evaluate_aggregate_per_masked_token():
    torch.manual_seed(0)
    model = tr.MIDITransformerEncoder(tiny_config())
    batches = [random_batch(n=3, length=20, seed=s) for s in range(3)]
    opt = pl.make_optimizer(model, 1e-3, 0.1)
    sched = pl.make_scheduler(opt, total_steps=3, warmup=1)
    stats = pl.train_one_epoch(model, batches, opt, sched, "cpu", generator=torch.Generator().manual_seed(0))
    assert {"loss", "tokens", "seconds", "tokens_per_s", "lr"} <= set(stats)
    assert stats["steps"] == 3 and stats["tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)
    assert stats["loss"] == pytest.approx(stats["loss_sum"] / stats["masked_tokens"])
    one = pl.evaluate(model, batches, "cpu", generator_seed=7)
    # the same items in other batches, another order and padding: identical masks and numbers
    rows = [{k: b[k][r:r + 1, :int(b["attention_mask"][r].sum())] for k in b} for b in batches for r in range(3)]
    two = pl.evaluate(model, rows[::-1], "cpu", generator_seed=7)
    assert one["tokens"] == two["tokens"] and one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    assert one["perplexity"] == pytest.approx(math.exp(one["loss"]))
    assert pl.evaluate(model, batches, "cpu", generator_seed=7) == one


def test_optimizer_groups_and_schedule():
    model = tr.MIDITransformerEncoder(tiny_config())
    opt = pl.make_optimizer(model, 1e-3, 0.1)
    decay, plain = ({id(p) for p in g["params"]} for g in opt.param_groups)
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    assert id(model.token_emb.weight) in plain and id(model.pos_emb.weight) in plain
    assert id(model.norm.weight) in plain and id(model.mlm_bias) in plain
    assert id(model.encoder.layers[0].linear1.weight) in decay and id(model.encoder.layers[0].linear1.bias) in plain
    assert len(decay | plain) == len(list(model.parameters()))
    f = pl.WarmupCosine(total_steps=110, warmup=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0) and f(500) == pytest.approx(0.0)


# -- checkpoints -----------------------------------------------------------------------------------
def test_checkpoint_round_trip_strips_ddp_prefix(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(pad_id=0, mask_id=3)
    model = tr.MIDITransformerEncoder(config).eval()
    opt = pl.make_optimizer(model, 1e-3, 0.1)
    tr.mlm_loss(model, random_batch(), torch.Generator().manual_seed(0)).loss.backward()
    opt.step()

    class DDPLike(torch.nn.Module):  # state dict keys gain "module." as under DistributedDataParallel
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    wrapped = DDPLike(model)
    assert next(iter(wrapped.state_dict())).startswith("module.")
    path = tr.save_checkpoint(tmp_path / "ckpt.pt", wrapped, config, '{"tok": 1}',
                              {"epoch": 3, "val_loss": np.float64(1.5), "optimizer_state": opt.state_dict()})
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in raw["model_state"])
    assert raw["format_version"] == 1 and raw["tokenizer"] == '{"tok": 1}' and raw["val_loss"] == 1.5
    loaded = tr.load_checkpoint(path)
    assert loaded.config == config and not loaded.model.training and loaded.extra["epoch"] == 3
    batch = random_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**batch), model(**batch), rtol=0, atol=0)
    opt2 = pl.make_optimizer(loaded.model, 1e-3, 0.1)
    opt2.load_state_dict(loaded.extra["optimizer_state"])  # resumable
    with pytest.raises(TypeError, match="extra.*set"):
        tr.save_checkpoint(tmp_path / "bad.pt", model, config, "{}", {"extra": {1, 2}})


def test_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=f"not found: {tmp_path / 'none.pt'}"):
        tr.load_checkpoint(tmp_path / "none.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"nope")
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {garbage}"):
        tr.load_checkpoint(garbage)
    model = tr.MIDITransformerEncoder(tiny_config())
    wrong_keys = tmp_path / "wrong_keys.pt"
    torch.save({"state_dict": model.state_dict()}, wrong_keys)
    with pytest.raises(CheckpointError, match=rf"{wrong_keys} lacks key\(s\) \['format_version', 'model_state'"):
        tr.load_checkpoint(wrong_keys)
    good = tr.save_checkpoint(tmp_path / "good.pt", model, tiny_config(), "{}")
    ckpt = torch.load(good, weights_only=True)
    ckpt["model_config"]["embed_dim"] = 64  # config and weights disagree
    torch.save(ckpt, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'shape.pt'} does not fit.*size mismatch"):
        tr.load_checkpoint(tmp_path / "shape.pt")
    ckpt = torch.load(good, weights_only=True)
    del ckpt["model_state"]["norm.weight"]
    torch.save(ckpt, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing.pt does not fit.*norm.weight"):
        tr.load_checkpoint(tmp_path / "missing.pt")


# -- unigram baseline ------------------------------------------------------------------------------
def test_unigram_perplexity_hand_computed():
    vocab = 6  # ids 0-3 special, 4 and 5 real
    counts = pl.count_tokens([np.array([1, 4, 4, 4, 5, 2]), torch.tensor([0, 0])], vocab, SPECIAL)
    assert counts.tolist() == [0, 0, 0, 0, 3, 1]
    logp = pl.unigram_log_probs(counts, SPECIAL)  # add-one over the 2 real ids: p4 = 4/6, p5 = 2/6
    assert np.exp(logp[4:]).tolist() == pytest.approx([4 / 6, 2 / 6]) and np.isneginf(logp[:4]).all()
    batch = {"input_ids": torch.tensor([[1] + [4, 5] * 20 + [2]]),
             "attention_mask": torch.ones((1, 42), dtype=torch.bool)}
    _, labels = pl.eval_mask(batch, 0, 3, vocab, SPECIAL)
    n4, n5 = int((labels == 4).sum()), int((labels == 5).sum())
    expected = math.exp(-(n4 * math.log(4 / 6) + n5 * math.log(2 / 6)) / (n4 + n5))
    got = pl.unigram_perplexity(counts, [batch], mask_id=3, special_ids=SPECIAL, generator_seed=0)
    assert got["tokens"] == n4 + n5 > 0 and got["perplexity"] == pytest.approx(expected)
    # the model is scored on the same positions
    model = tr.MIDITransformerEncoder(tiny_config(vocab_size=vocab))
    assert pl.evaluate(model, [batch], "cpu", generator_seed=0)["tokens"] == n4 + n5


# -- the embedder ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("mt"), max_seq_len=24)


def test_embedder_through_registry(checkpoint):
    emb = get_embedder("midi_transformer", checkpoint=str(checkpoint), device="cpu")
    assert emb.dim == 32 and emb.hop_seconds is None and emb.modality == "symbolic"
    long_piece = tempo_change_score(n_beats=48)
    items = [score_from_notes(scale_notes(60, 4)), long_piece, score_from_notes(scale_notes(48, 12), bpm=90)]
    out = emb.embed(items)
    from embedders.symbolic.midi_transformer.chunking import tokenize_to_chunks

    for item, o in zip(items, out):
        assert o.dtype == np.float32 and o.shape == (len(tokenize_to_chunks(emb.tokenizer, item, 24)), 32)
    assert out[1].shape[0] > 3  # the long piece is several chunks
    for a, b in zip(out, emb.embed(items)):
        np.testing.assert_array_equal(a, b)
    for item, expected in zip(items, out):  # alone vs in a batch
        np.testing.assert_allclose(emb.embed([item])[0], expected, rtol=1e-5, atol=1e-6)
    shorter = get_embedder("midi_transformer", checkpoint=str(checkpoint), max_seq_len=12, device="cpu")
    assert shorter.embed([long_piece])[0].shape[0] > out[1].shape[0]


def test_embedder_prepare_then_forward_is_embed(checkpoint):
    """Tokenising and chunking (the CPU stage) need no network: an instance for prepare never loads
    one, even when asked for a GPU this host lacks; forward over its chunks gives embed's numbers."""
    from embedders.symbolic.midi_transformer.embedder import MIDITransformerEmbedder, MIDITransformerEmbedderConfig

    assert MIDITransformerEmbedderConfig().device == "auto" and MIDITransformerEmbedder.uses_accelerator
    emb = get_embedder("midi_transformer", checkpoint=str(checkpoint), device="cpu")
    items = [score_from_notes(scale_notes(60, 4)), tempo_change_score(n_beats=48)]
    preparer = MIDITransformerEmbedder.for_prepare(MIDITransformerEmbedderConfig(checkpoint=str(checkpoint),
                                                                                 device="cuda:5"))
    prepared = [preparer.prepare(item) for item in items]
    assert preparer._model is None and len(prepared[1]) > 3
    assert all(c.dtype == np.int32 and len(c) <= 24 for chunks in prepared for c in chunks)
    for x, y in zip(emb.forward(prepared), emb.embed(items)):
        np.testing.assert_array_equal(x, y)
    (result,) = emb.embed_items(["long"], [prepared[1]], prepared=True, with_average=True)
    np.testing.assert_allclose(result.average, result.sequence.mean(0), rtol=1e-6)


def test_embedder_needs_a_checkpoint_and_hashes_its_content(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match=r"python -m ray_jobs.pretrain.*--symbolic_checkpoint"):
        get_embedder("midi_transformer")
    with pytest.raises(CheckpointError, match="not found"):
        get_embedder("midi_transformer", checkpoint=str(tmp_path / "missing.pt"))
    path = tmp_path / "model.pt"
    path.write_bytes(checkpoint.read_bytes())
    emb = get_embedder("midi_transformer", checkpoint=str(path))
    before = emb.config_hash()
    assert emb.describe()["checkpoint_sha256"] and emb.describe()["model_config"]["embed_dim"] == 32
    loaded = tr.load_checkpoint(path)
    with torch.no_grad():
        loaded.model.norm.bias.add_(1.0)
    tr.save_checkpoint(path, loaded.model, loaded.config, loaded.tokenizer_params, loaded.extra)
    assert type(emb).hash_config(emb.config) != before


def test_pieces_fit_together(tmp_path):
    """Tokenizer -> presaved chunks -> DataLoader -> 2 epochs (one in bfloat16 autocast) -> checkpoint -> embedder."""
    from functools import partial

    from torch.utils.data import DataLoader

    from embedders.symbolic.midi_transformer import tokenizer as tk
    from tests.midi_model_factory import write_tiny_midis
    from training import midi_datasets as md

    files = write_tiny_midis(tmp_path / "midi", n=4)
    tokenizer = tk.load_or_train_tokenizer(tmp_path / "tokenizer.json", files[:3], 560)
    sp = tk.special_ids(tokenizer)
    train = md.MIDIDatasetPresaved(files[:3], tokenizer, 32, tmp_path / "cache")
    val = md.MIDIDatasetDynamic(files[3:], tokenizer, 32)
    loader = DataLoader(train, batch_size=4, shuffle=True, collate_fn=partial(md.collate, pad_id=sp.pad),
                        generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(val, batch_size=8, collate_fn=partial(md.collate, pad_id=sp.pad))
    config = tr.MIDITransformerConfig(vocab_size=tk.vocab_size(tokenizer), max_seq_len=32, embed_dim=32, nhead=2,
                                      num_layers=1, pad_id=sp.pad, mask_id=sp.mask, bos_id=sp.bos, eos_id=sp.eos)
    model = tr.MIDITransformerEncoder(config)
    opt = pl.make_optimizer(model, 1e-3, 0.1)
    sched = pl.make_scheduler(opt, total_steps=2 * len(loader), warmup=1)
    g = torch.Generator().manual_seed(0)
    for amp in (None, torch.bfloat16):
        stats = pl.train_one_epoch(model, loader, opt, sched, "cpu", amp_dtype=amp, generator=g)
        assert stats["steps"] == len(loader) and math.isfinite(stats["loss"])
    val_stats = pl.evaluate(model, val_loader, "cpu", generator_seed=0)
    counts = pl.count_tokens((train[i]["input_ids"] for i in range(len(train))), config.vocab_size, config.special_ids)
    base = pl.unigram_perplexity(counts, val_loader, config.mask_id, config.special_ids, generator_seed=0)
    assert base["tokens"] == val_stats["tokens"] > 0 and math.isfinite(val_stats["perplexity"])
    path = tr.save_checkpoint(tmp_path / "best.pt", model, config, tk.tokenizer_params(tokenizer),
                              {"epoch": 2, "val_loss": val_stats["loss"], "optimizer_state": opt.state_dict()})
    emb = get_embedder("midi_transformer", checkpoint=str(path))
    (out,) = emb.embed([tempo_change_score()])
    assert out.shape[1] == 32 and out.shape[0] >= 2


@pytest.mark.gpu
def test_embedder_cuda_matches_cpu(checkpoint):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    items = [score_from_notes(scale_notes(60, 4)), tempo_change_score(n_beats=48)]
    cpu = get_embedder("midi_transformer", checkpoint=str(checkpoint), device="cpu").embed(items)  # the reference
    fp32 = get_embedder("midi_transformer", checkpoint=str(checkpoint), device="cuda", precision="fp32")
    assert fp32.device.type == "cuda" and fp32.autocast_dtype is None
    for a, b in zip(fp32.embed(items), cpu):  # IEEE fp32 (TF32 off): 1e-3 relative
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    auto = get_embedder("midi_transformer", checkpoint=str(checkpoint))  # device auto -> cuda here
    assert auto.device.type == "cuda" and auto.autocast_dtype in (torch.bfloat16, torch.float16)
    for a, b in zip(auto.embed(items), cpu):  # bf16 autocast, fp32 pooling: cosine > 0.99 per chunk
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert a.dtype == np.float32 and cos.min() > 0.99, cos
