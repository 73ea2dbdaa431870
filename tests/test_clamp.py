"""The ``clamp`` embedder: MIDI -> MTF -> patches -> segments -> CLaMP 3 symbolic encoder.

Known answers for the text conversion and patching (worked out by hand from the authors' rules),
segment spans and weights, checkpoints in the published layout (built by
tests/pretrained_factories/clamp.py), errors, and two independent forwards for the same weights:
a plain-torch re-derivation (one-hot matmul, explicit softmax, padding to max_patches, one segment
at a time, as the authors' extract_clamp3.py) and transformers' BertModel (the authors' own class).
"""

from __future__ import annotations

import io
import math
import os
import sys

import numpy as np
import pytest
import torch

from embedders.base import CheckpointError, ConfigError, MidiDecodeError, MissingDependencyError
from embedders.registry import get_embedder
from embedders.symbolic import clamp
from embedders.symbolic.clamp import (
    encode_mtf,
    midi_to_mtf,
    mtf_patch_texts,
    patch_ids,
    segment_spans,
    segment_weights,
    weighted_average,
)
from tests.factory import scale_notes, score_from_notes
from tests.pretrained_factories.clamp import SMALL, published_dict, random_model, write_checkpoint

try:
    import mido
except ImportError:  # the [clamp] extra installs it (pretty_midi pulls it in too); CI must have it
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("mido not installed: pip install 'audio-vs-symbolic[clamp]'", allow_module_level=True)


def optional(module: str):
    """Import a test-time package; skip without it, except under CI=true, which installs it."""
    try:
        return __import__(module)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but '{module}' is not installed; CI installs the test extras")
        pytest.skip(f"'{module}' not installed (test-time reference only)")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("clamp") / "weights.pth")


CPU = {"device": "cpu"}  # reference numbers are CPU fp32; under device=auto a GPU would run bf16


@pytest.fixture(scope="module")
def embedder(ckpt):
    return get_embedder("clamp", checkpoint=str(ckpt), **CPU, **SMALL)


def known_midi() -> bytes:
    """Two tracks, meta text to drop, note ends both ways, a sysex, a dropped message with a delta."""
    M, MM = mido.Message, mido.MetaMessage
    mid = mido.MidiFile(type=1, ticks_per_beat=96)
    mid.tracks.append(mido.MidiTrack([
        MM("track_name", name="Piano", time=0), MM("set_tempo", tempo=500000, time=0),
        MM("time_signature", numerator=3, denominator=4, time=0), MM("text", text="hello", time=0),
        MM("end_of_track", time=0)]))
    mid.tracks.append(mido.MidiTrack([
        M("program_change", program=5, channel=1, time=0), M("note_on", note=60, velocity=90, channel=1, time=0),
        M("note_on", note=64, velocity=70, channel=1, time=0), M("note_on", note=60, velocity=0, channel=1, time=96),
        M("note_off", note=64, velocity=40, channel=1, time=0),
        M("control_change", control=64, value=127, channel=1, time=10), MM("lyrics", text="la", time=3),
        M("sysex", data=[1, 2, 3], time=5), MM("end_of_track", time=20)]))
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


KNOWN_MTF = ("ticks_per_beat 96\nset_tempo 500000 0\ntime_signature 3 4 24 8 0\nprogram_change 0 1 5\n"
             "note_on 0 1 60 90\nnote_on 0 1 64 70\nnote_on 96 1 60 0\nnote_off 0 1 64 40\n"
             "control_change 10 1 64 127\nsysex 5 [1, 2, 3]\nend_of_track 20")


# -- MIDI -> MTF ------------------------------------------------------------------------------------
def test_mtf_known_answer():
    # merged_track order, values in msg.dict() order, text/track_name/lyrics dropped (their delta
    # times are dropped with them, as in the authors' converter), one end_of_track at the end
    assert midi_to_mtf(known_midi()) == KNOWN_MTF
    # CLaMP 2's converter also drops sysex (and sequencer_specific)
    assert midi_to_mtf(known_midi(), "clamp2") == KNOWN_MTF.replace("sysex 5 [1, 2, 3]\n", "")


def test_mtf_of_a_score_documents_the_symusic_round_trip(embedder):
    score = score_from_notes([(0, 1, 60), (1, 1, 62)], bpm=120, tpq=480)
    # symusic writes note ends as note_off carrying the note's velocity
    assert embedder.mtf(score) == ("ticks_per_beat 480\nset_tempo 500000 0\nprogram_change 0 0 0\n"
                                   "note_on 0 0 60 80\nnote_off 480 0 60 80\nnote_on 0 0 62 80\n"
                                   "note_off 480 0 62 80\nend_of_track 1")
    assert embedder.mtf(score.to("second")) == embedder.mtf(score)


def test_message_text_is_ascii():
    assert clamp.message_text(mido.MetaMessage("text", text="café\ttab")) == "text caf\\xe9\\ttab 0"


def test_bad_midi_bytes_raise_midi_decode_error(embedder):
    with pytest.raises(MidiDecodeError, match="mido cannot read"):
        midi_to_mtf(b"MThd nonsense")
    (result,) = embedder.embed_items(["broken"], [b"not a midi file"])
    assert isinstance(result, MidiDecodeError) and result.item_id == "broken"


def test_missing_mido_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mido", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'audio-vs-symbolic\[clamp\]'"):
        midi_to_mtf(known_midi())


# -- patching and segments --------------------------------------------------------------------------
def test_patches_known_answer():
    texts = mtf_patch_texts(KNOWN_MTF, 64)
    assert texts == ["ticks_per_beat 96\n", "set_tempo 500000 0\n", "time_signature 3 4 24 8 0\n",
                     "program_change 0 1 5\n", "note_on 0 1 60 90\t0 1 64 70\t96 1 60 0\n",
                     "note_off 0 1 64 40\n", "control_change 10 1 64 127\n", "sysex 5 [1, 2, 3]\n",
                     "end_of_track 20"]
    ids = encode_mtf(KNOWN_MTF, 64)
    assert ids.shape == (len(texts) + 2, 64) and ids.dtype == np.int64
    assert ids[0].tolist() == [1] * 64  # bos patch
    assert ids[-1].tolist() == [1] + [2] * 63  # eos patch
    first = [1] + [ord(c) for c in "ticks_per_beat 96\n"] + [2]
    assert ids[1].tolist() == first + [0] * (64 - len(first))


def test_patch_length_limit_and_truncation():
    # A same-type run is joined while the patch stays within patch_size - 2 = 62 characters:
    # 18 + 4 * 10 = 58 fits, a fifth continuation (68) starts a new patch.
    mtf = "ticks_per_beat 480\n" + "\n".join(["note_on 0 0 60 80"] * 7)
    texts = mtf_patch_texts(mtf, 64)
    assert texts[1] == "note_on 0 0 60 80" + "\t0 0 60 80" * 4 + "\n"
    assert texts[2] == "note_on 0 0 60 80\t0 0 60 80" and len(texts) == 3
    # a line longer than the patch is cut: no room for eos
    long = "x" * 80
    assert patch_ids(long, 64) == [1] + [ord("x")] * 63


@pytest.mark.parametrize("n, spans, weights", [
    (300, [(0, 300)], [300]),
    (512, [(0, 512)], [512]),
    (1024, [(0, 512), (512, 1024)], [512, 512]),
    (1100, [(0, 512), (512, 1024), (588, 1100)], [512, 512, 76]),
])
def test_segments_as_the_authors(n, spans, weights):
    # segments of 512, the last replaced by the final 512 patches; weights = new patches per segment
    assert segment_spans(n, 512) == spans
    assert segment_weights(n, 512).tolist() == weights


def test_weighted_average():
    seq = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(weighted_average(seq, np.array([512, 76])), [512 / 588, 76 / 588], rtol=1e-6)


# -- the embedder on a published-format checkpoint -------------------------------------------------
def long_score(n_notes=40):
    return score_from_notes(scale_notes(50, n_notes, 0.5), bpm=100)


def test_shape_dtype_determinism(embedder):
    items = [long_score(), score_from_notes(scale_notes(60, 8)), known_midi()]
    out = embedder.embed(items)
    n_patches = [len(embedder.patches(i)) for i in items]
    assert [o.shape for o in out] == [(math.ceil(n / 16), 32) for n in n_patches]
    assert out[0].shape[0] >= 3, "the long item must span several segments"
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in out)
    again = embedder.embed(items)
    for a, b in zip(out, again):
        np.testing.assert_array_equal(a, b)
    for item, expected in zip(items, out):  # batching across items does not change a result
        np.testing.assert_allclose(embedder.embed([item])[0], expected, rtol=1e-5, atol=1e-6)
    # nor does padding: several segments of different lengths per forward pass
    padded = get_embedder("clamp", checkpoint=embedder.config.checkpoint, batch_size=4, **CPU, **SMALL)
    for a, b in zip(padded.embed(items), out):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert embedder.dim == 32 and embedder.variant == "clamp3"
    assert embedder.checkpoint_meta == {"epoch": 100, "best_epoch": 97, "min_eval_loss": 1.2345, "modality": "symbolic"}


def manual_forward(model, patches: np.ndarray, max_patches: int) -> np.ndarray:
    """One segment the authors' way, re-derived in plain torch: pad to max_patches, one-hot @ W,
    explicit softmax attention with an additive mask, post-LN layers, masked mean, projection."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    c = model.config
    n = len(patches)
    ids = torch.zeros(max_patches, c.patch_size, dtype=torch.long)
    ids[:n] = torch.from_numpy(patches)
    mask = torch.zeros(max_patches, dtype=torch.double)
    mask[:n] = 1
    one_hot = torch.nn.functional.one_hot(ids, 128).reshape(max_patches, -1).double()
    x = one_hot @ sd["symbolic_model.patch_embedding.weight"].T + sd["symbolic_model.patch_embedding.bias"]
    e = "symbolic_model.base.embeddings."

    def ln(t, p):
        return torch.nn.functional.layer_norm(t, (t.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], 1e-12)

    def lin(t, p):
        return t @ sd[p + ".weight"].T + sd[p + ".bias"]

    x = ln(x + sd[e + "position_embeddings.weight"] + sd[e + "token_type_embeddings.weight"][0], e + "LayerNorm")
    heads, hd = c.hidden_size // 64, 64
    for i in range(c.num_layers):
        p = f"symbolic_model.base.encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{w}").view(max_patches, heads, hd).transpose(0, 1)
                   for w in ("query", "key", "value"))
        scores = q @ k.transpose(1, 2) / math.sqrt(hd) + (1 - mask) * -1e9
        ctx = (scores.softmax(-1) @ v).transpose(0, 1).reshape(max_patches, -1)
        a = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = torch.nn.functional.gelu(lin(a, p + "intermediate.dense"))
        x = ln(lin(h, p + "output.dense") + a, p + "output.LayerNorm")
    pooled = (x * mask[:, None]).sum(0) / mask.sum()
    return lin(pooled, "symbolic_proj").numpy()


def test_equals_an_independent_forward_with_length_weighting(embedder):
    model = random_model(SMALL)  # the same seeded weights the checkpoint holds
    item = long_score()
    patches = embedder.patches(item)
    spans = segment_spans(len(patches), 16)
    expected_seq = np.stack([manual_forward(model, patches[a:b], 16) for a, b in spans])
    w = np.array([16] * (len(patches) // 16) + ([len(patches) % 16] if len(patches) % 16 else []), float)
    expected_global = (expected_seq * w[:, None]).sum(0) / w.sum()
    np.testing.assert_allclose(embedder.embed([item])[0], expected_seq, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_global([item])[0], expected_global, rtol=1e-4, atol=1e-5)
    (stored,) = embedder.embed_items(["long"], [item], with_average=True)  # what the store keeps
    np.testing.assert_allclose(stored.sequence, expected_seq, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stored.average, expected_global, rtol=1e-4, atol=1e-5)
    # the store's plain mean differs from the authors' weighted one once segments differ in weight
    assert len(set(w)) > 1 and not np.allclose(expected_seq.mean(0), expected_global, atol=1e-4)


def test_equals_transformers_bert_with_the_same_weights(embedder):
    transformers = optional("transformers")
    model = random_model(SMALL)
    c = model.config
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=1, hidden_size=c.hidden_size, num_hidden_layers=c.num_layers, num_attention_heads=c.hidden_size // 64,
        intermediate_size=4 * c.hidden_size, max_position_embeddings=c.max_patches)).eval()
    base = {k[len("symbolic_model.base."):]: v for k, v in model.state_dict().items()
            if k.startswith("symbolic_model.base.")}
    assert set(base) == set(bert.state_dict()), "state-dict keys differ from BertModel's"
    bert.load_state_dict(base, strict=True)
    patch_embedding = torch.nn.Linear(c.patch_size * 128, c.hidden_size)
    patch_embedding.load_state_dict({"weight": model.state_dict()["symbolic_model.patch_embedding.weight"],
                                     "bias": model.state_dict()["symbolic_model.patch_embedding.bias"]})
    item = long_score()
    patches = embedder.patches(item)
    rows = []
    with torch.no_grad():
        for a, b in segment_spans(len(patches), c.max_patches):  # the authors: pad each segment to PATCH_LENGTH
            ids = torch.zeros(1, c.max_patches, c.patch_size, dtype=torch.long)
            ids[0, :b - a] = torch.from_numpy(patches[a:b])
            mask = torch.zeros(1, c.max_patches)
            mask[0, :b - a] = 1
            x = patch_embedding(torch.nn.functional.one_hot(ids, 128).reshape(1, c.max_patches, -1).float())
            h = bert(inputs_embeds=x, attention_mask=mask)["last_hidden_state"]
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            rows.append(model.symbolic_proj(pooled)[0].numpy())
    np.testing.assert_allclose(embedder.embed([item])[0], np.stack(rows), rtol=1e-4, atol=1e-5)


def test_prepare_then_forward_is_embed(ckpt, embedder):
    """The job's two stages: patches made by an instance that never loads the network (a CPU decode
    task, even one asked for a GPU it lacks), then a batched forward, give embed's numbers."""
    items = [long_score(), known_midi(), score_from_notes(scale_notes(60, 8))]
    preparer = clamp.CLaMPEmbedder.for_prepare(clamp.CLaMPConfig(checkpoint=str(ckpt), device="cuda:3", **SMALL))
    prepared = [preparer.prepare(i) for i in items]
    assert preparer._model is None and preparer.variant == "clamp3"  # read from the keys, not the model
    assert all(p.dtype == np.int64 and p.shape[1] == 64 for p in prepared)
    expected = embedder.embed(items)
    for x, y in zip(embedder.forward(prepared), expected):
        np.testing.assert_array_equal(x, y)
    ids = ["long", "bytes", "short", "empty"]
    ready = preparer.prepare_items(ids, [*items, score_from_notes([])])
    assert type(ready[3]).__name__ == "EmptyInputError" and ready[3].item_id == "empty"
    results = embedder.embed_items(ids, ready, prepared=True, with_average=True)
    for r, y, p in zip(results, expected, prepared):
        np.testing.assert_array_equal(r.sequence, y)
        np.testing.assert_allclose(r.average, weighted_average(y, segment_weights(len(p), 16)), rtol=1e-6)
    assert results[3] is ready[3]


def test_patch_embedding_reads_a_contiguous_table():
    model = random_model(SMALL).requires_grad_(False)
    encoder = model.symbolic_model
    table = encoder._embedding_table()
    assert table.is_contiguous() and table.shape == (64 * 128, 64)
    torch.testing.assert_close(table, encoder.patch_embedding.weight.t(), rtol=0, atol=0)
    assert encoder._embedding_table() is table  # made once per weight version
    with torch.no_grad():
        encoder.patch_embedding.weight.add_(1.0)  # a new version: the table follows
    torch.testing.assert_close(encoder._embedding_table(), encoder.patch_embedding.weight.t(), rtol=0, atol=0)
    patches = torch.randint(0, 128, (2, 3, 64))
    one_hot = torch.nn.functional.one_hot(patches, 128).reshape(2, 3, -1).float()
    torch.testing.assert_close(encoder.embed_patches(patches), encoder.patch_embedding(one_hot), rtol=1e-5, atol=1e-5)


def test_published_key_layout(ckpt):
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    sym = sorted(k for k in state if k.startswith(("symbolic_model.", "symbolic_proj.")))
    layer = [f"symbolic_model.base.encoder.layer.{i}.{part}.{wb}" for i in range(2) for wb in ("weight", "bias")
             for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                          "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                          "output.dense", "output.LayerNorm")]
    expected = ["symbolic_model.patch_embedding.weight", "symbolic_model.patch_embedding.bias",
                "symbolic_model.base.embeddings.word_embeddings.weight",
                "symbolic_model.base.embeddings.position_embeddings.weight",
                "symbolic_model.base.embeddings.token_type_embeddings.weight",
                "symbolic_model.base.embeddings.LayerNorm.weight", "symbolic_model.base.embeddings.LayerNorm.bias",
                *layer, "symbolic_model.base.pooler.dense.weight", "symbolic_model.base.pooler.dense.bias",
                "symbolic_proj.weight", "symbolic_proj.bias"]
    assert sym == sorted(expected)
    assert tuple(state["symbolic_model.patch_embedding.weight"].shape) == (64, 64 * 128)


@pytest.mark.parametrize("layout", ["clamp2", "bare", "ddp"])
def test_other_layouts_give_the_same_vectors(tmp_path, embedder, layout):
    model = random_model(SMALL)
    if layout == "clamp2":
        path = write_checkpoint(tmp_path / "clamp2.pth", variant="clamp2", model=model)
    else:
        state = published_dict(model)["model"]
        if layout == "ddp":
            state = {"module." + k: v for k, v in state.items()}
        path = tmp_path / f"{layout}.pth"
        torch.save(state, path)
    other = get_embedder("clamp", checkpoint=str(path), **CPU, **SMALL)
    assert other.variant == ("clamp2" if layout == "clamp2" else "clamp3")
    item = long_score()
    np.testing.assert_allclose(other.embed([item])[0], embedder.embed([item])[0], rtol=1e-6, atol=1e-7)


def test_hash_follows_the_weights(tmp_path, ckpt):
    cls = type(get_embedder("clamp", checkpoint=str(ckpt), **SMALL))
    other = write_checkpoint(tmp_path / "other.pth", seed=1)
    a, b = (cls.hash_config(cls.make_config(checkpoint=str(p), **SMALL)) for p in (ckpt, other))
    assert a != b
    assert len(cls.describe_config(cls.make_config(checkpoint=str(ckpt), **SMALL))["checkpoint_sha256"]) == 64


# -- errors -------------------------------------------------------------------------------------------
class NotATensor:
    pass


def test_missing_checkpoint_says_where_to_get_weights(tmp_path):
    with pytest.raises(CheckpointError, match=r"needs a checkpoint: download .*huggingface\.co/sander-wood/clamp3"):
        get_embedder("clamp")
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=rf"not found: {missing}.*sander-wood/clamp2"):
        get_embedder("clamp", checkpoint=str(missing))


def test_malformed_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"cannot read CLaMP checkpoint {garbage}"):
        get_embedder("clamp", checkpoint=str(garbage), **SMALL)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": {}, "extra": NotATensor()}, unsafe)
    with pytest.raises(CheckpointError, match="weights_only"):
        get_embedder("clamp", checkpoint=str(unsafe), **SMALL)
    text_only = tmp_path / "text_only.pth"
    torch.save({"model": {"text_model.embeddings.word_embeddings.weight": torch.zeros(2, 2)}}, text_only)
    with pytest.raises(CheckpointError, match=r"no symbolic encoder: expected keys starting with 'symbolic_model\.'"
                                              r" or 'music_model\.'; found top-level names \['text_model'\]"):
        get_embedder("clamp", checkpoint=str(text_only), **SMALL)


def test_size_mismatch_names_keys_and_implied_options(ckpt):
    with pytest.raises(CheckpointError) as info:
        get_embedder("clamp", checkpoint=str(ckpt), **{**SMALL, "hidden_size": 128, "num_layers": 3})
    msg = str(info.value)
    assert str(ckpt) in msg and "Missing" in msg and "symbolic_model.base.encoder.layer.2." in msg
    assert "Shape mismatches: ['symbolic_model.base.embeddings.LayerNorm.bias: expected (128,), found (64,)'" in msg
    assert "imply hidden_size=64, num_layers=2" in msg


def test_config_validation():
    with pytest.raises(ConfigError, match="multiple of 64"):
        get_embedder("clamp", hidden_size=100)
    with pytest.raises(ConfigError, match="segment_patches 600 exceeds max_patches 512"):
        get_embedder("clamp", segment_patches=600)
    with pytest.raises(ConfigError, match="precision must be one of"):
        get_embedder("clamp", precision="int8")


def test_in_the_pipeline_actor(ckpt):
    from ray_jobs.generate_embeddings.pipeline import EmbedActor, MediumSpec

    spec = MediumSpec("symbolic_embeddings", "midi_filename", "clamp", {"checkpoint": str(ckpt), **CPU, **SMALL}, None)
    good = np.frombuffer(known_midi(), dtype=np.uint8)
    bad = np.frombuffer(b"MThd\x00\x00\x00\x06broken", dtype=np.uint8)
    out = EmbedActor(spec)({"id": np.array(["a", "b"], dtype=object), "payload": [good, bad],
                            "error_type": ["", ""], "error_message": ["", ""], "stage": ["", ""]})
    assert out["sequence"][0].shape[1] == 32 and out["error_type"] == ["", "MidiDecodeError"]


@pytest.mark.gpu
def test_cuda_autocast_close_to_fp32(ckpt):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    items = [long_score(), score_from_notes(scale_notes(60, 8))]
    cpu = get_embedder("clamp", checkpoint=str(ckpt), device="cpu", **SMALL).embed(items)  # CPU fp32: the reference
    gpu = get_embedder("clamp", checkpoint=str(ckpt), device="cuda", **SMALL)
    assert gpu.autocast_dtype == (torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16)
    for a, b in zip(gpu.embed(items), cpu):  # bf16 autocast: cosine > 0.99 per segment
        assert a.dtype == np.float32 and a.shape == b.shape
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.99
    fp32 = get_embedder("clamp", checkpoint=str(ckpt), device="cuda", precision="fp32", **SMALL).embed(items)
    for a, b in zip(fp32, cpu):  # IEEE fp32 (TF32 off): 1e-3 relative
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_pipeline_actors_pass_the_original_midi_file(ckpt, tmp_path):
    """Both actor layouts hand clamp the file's own bytes (the authors' input), never a Score
    re-encoded from it, and the vectors equal embedding those bytes directly."""
    from ray_jobs.generate_embeddings.pipeline import EmbedActor, MediumSpec

    spec = MediumSpec("symbolic_embeddings", "midi_filename", "clamp", {"checkpoint": str(ckpt), **CPU, **SMALL}, None)
    data = known_midi()
    (tmp_path / "a.mid").write_bytes(data)
    direct = get_embedder("clamp", checkpoint=str(ckpt), **CPU, **SMALL).embed([data])[0]
    batches = [
        (EmbedActor(spec), {"id": np.array(["a"], dtype=object), "payload": [np.frombuffer(data, np.uint8)],
                            "error_type": [""], "error_message": [""], "stage": [""]}),
        (EmbedActor(spec, root=str(tmp_path)), {"id": np.array(["a"], dtype=object),
                                                 "path": np.array(["a.mid"], dtype=object)}),
    ]
    for actor, batch in batches:
        seen = []
        original = actor.embedder.embed_items
        actor.embedder.embed_items = (lambda ids, items, _f=original, _seen=seen, **kw:
                                      _seen.extend(type(i) for i in items) or _f(ids, items, **kw))
        out = actor(batch)
        assert seen == [bytes]
        np.testing.assert_array_equal(out["sequence"][0], direct)
