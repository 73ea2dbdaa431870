"""The pretraining loop's GPU path, exercised on the CPU where it can be; CUDA-only checks behind ``gpu``.

CPU: the loop gives the numbers of the reference path (the model file's ``mlm_loss`` /
``masked_lm_loss`` with boolean indexing, as the loop was before the GPU path), bit for bit; a
rank whose batch has no masked token still runs backward under DDP (2 gloo processes); the
attention runs without a mask only where a batch has no padding; optimizer and precision choices;
placement: workers pinned to the driver's node, and ``ray.use_gpu=true`` without a GPU failing
at once with one line and exit status 2.
GPU (``-m gpu``, skipped without CUDA): a training epoch without a single host synchronisation
(``torch.cuda.set_sync_debug_mode("error")``), CUDA fp32 and bf16 against CPU fp32, fused AdamW,
and a CPU checkpoint resumed on CUDA.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from embedders.symbolic.midi_transformer import transformer as tr
from training import pretrain_loop as pl

SPECIAL = (0, 1, 2, 3)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**kw) -> tr.MIDITransformerConfig:
    base = dict(vocab_size=40, max_seq_len=64, embed_dim=32, nhead=2, num_layers=2, dropout=0.1)
    return tr.MIDITransformerConfig(**{**base, **kw})


def batch(lengths: list[int], seed: int = 0, vocab: int = 40) -> dict[str, torch.Tensor]:
    """BOS + random non-special ids + EOS per row, right-padded to the longest length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros((len(lengths), max(lengths)), dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for r, k in enumerate(lengths):
        ids[r, :k] = torch.randint(4, vocab, (k,), generator=g)
        ids[r, 0], ids[r, k - 1] = 1, 2
        mask[r, :k] = True
    return {"input_ids": ids, "attention_mask": mask}


def batches() -> list[dict[str, torch.Tensor]]:
    return [batch([20, 15, 9], seed=0), batch([24, 24, 24], seed=1), batch([12, 30], seed=2)]


def reference_epoch(model, loader, optimizer, generator, grad_clip=1.0) -> dict[str, float]:
    """The loop as it was: the model file's mlm_loss (boolean indexing on the batch), float32 loss sum."""
    loss_sum, masked = torch.zeros(()), 0
    model.train()
    for b in loader:
        out = tr.mlm_loss(model, b, generator)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        loss_sum += out.loss_sum
        masked += out.n_masked
    return {"loss_sum": float(loss_sum), "masked_tokens": masked}


# -- the CPU path keeps its numbers ----------------------------------------------------------------
def test_cpu_epoch_matches_the_reference_path_bit_for_bit():
    torch.manual_seed(0)
    model = tr.MIDITransformerEncoder(tiny_config())
    ref_model = copy.deepcopy(model)
    opt, ref_opt = pl.make_optimizer(model, 1e-3, 0.1), pl.make_optimizer(ref_model, 1e-3, 0.1)
    torch.manual_seed(5)  # dropout draws the same numbers in both runs
    stats = pl.train_one_epoch(model, batches(), opt, None, "cpu", generator=torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    ref = reference_epoch(ref_model, batches(), ref_opt, torch.Generator().manual_seed(3))
    assert stats["masked_tokens"] == ref["masked_tokens"] and stats["loss_sum"] == ref["loss_sum"]
    assert stats["steps"] == 3 and stats["tokens"] == 20 + 15 + 9 + 72 + 12 + 30
    for (name, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_cpu_evaluate_matches_the_reference_path_bit_for_bit():
    torch.manual_seed(0)
    model = tr.MIDITransformerEncoder(tiny_config())
    many = [batch([5 + (7 * s) % 40, 3 + (11 * s) % 30], seed=s) for s in range(40)]  # enough sums to expose float32
    got = pl.evaluate(model, many, "cpu", generator_seed=7)
    model.eval()
    loss_sum, n = 0.0, 0
    with torch.no_grad():
        for b in many:  # as evaluate summed before: a Python float per batch
            masked, labels = pl.eval_mask(b, 7, 3, 40, SPECIAL)
            out = tr.masked_lm_loss(model, masked, b["attention_mask"], labels)
            loss_sum += float(out.loss_sum)
            n += out.n_masked
    assert got["masked_tokens"] == n and got["loss_sum"] == loss_sum and got["loss"] == loss_sum / n


# -- per-step pieces -------------------------------------------------------------------------------
def test_step_batch_positions_targets_and_the_skipped_mask():
    b = batch([20, 15, 9], seed=4)
    masked, labels = tr.mask_tokens(b["input_ids"], b["attention_mask"], 3, 40, SPECIAL, 0.15,
                                    torch.Generator().manual_seed(0))
    picked = labels != -100
    step = pl.step_batch(masked, b["attention_mask"], labels, "cpu", skip_full_mask=True)
    assert step.n_masked == int(picked.sum()) and step.tokens == 44
    assert torch.equal(step.targets, labels[picked]) and step.attention_mask is not None  # padded: mask kept
    marks = torch.zeros_like(picked)
    marks[step.positions] = True
    assert torch.equal(marks, picked)
    torch.manual_seed(0)
    model = tr.MIDITransformerEncoder(tiny_config()).eval()
    with torch.no_grad():  # index pairs select the rows a boolean mask selects, in the same order
        torch.testing.assert_close(model(masked, b["attention_mask"], step.positions),
                                   model(masked, b["attention_mask"], picked), rtol=0, atol=0)
    full = batch([24, 24], seed=5)
    assert pl.step_batch(full["input_ids"], full["attention_mask"], labels[:2, :24], "cpu",
                         skip_full_mask=True).attention_mask is None
    assert pl.step_batch(full["input_ids"], full["attention_mask"], labels[:2, :24],
                         "cpu").attention_mask is not None  # on the CPU the mask stays by default


def test_no_mask_for_unpadded_batches_changes_nothing_but_the_kernel():
    torch.manual_seed(0)
    model = tr.MIDITransformerEncoder(tiny_config(dropout=0.0))
    full = [batch([24, 24, 24], seed=s) for s in range(3)]
    a = pl.evaluate(model, full, "cpu", generator_seed=1, skip_full_mask=True)
    b = pl.evaluate(model, full, "cpu", generator_seed=1, skip_full_mask=False)
    assert a["masked_tokens"] == b["masked_tokens"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    # a padded batch keeps its mask even when full masks are skipped ...
    padded = [batch([24, 10], seed=9)]
    kept = pl.evaluate(model, padded, "cpu", generator_seed=1, skip_full_mask=True)
    assert kept == pl.evaluate(model, padded, "cpu", generator_seed=1, skip_full_mask=False)
    # ... and that matters: without it the padding leaks into the real positions
    masked, labels = pl.eval_mask(padded[0], 1, 3, 40, SPECIAL)
    step = pl.step_batch(masked, padded[0]["attention_mask"], labels, "cpu")
    with torch.no_grad():
        logits = model.eval()(step.input_ids, None, step.positions)
    leaked = float(torch.nn.functional.cross_entropy(logits, step.targets, reduction="sum")) / step.n_masked
    assert leaked != pytest.approx(kept["loss"], rel=1e-4)


def test_batch_without_a_masked_token_still_steps():
    torch.manual_seed(0)
    model = tr.MIDITransformerEncoder(tiny_config())
    opt = pl.make_optimizer(model, 1e-3, 0.1)
    specials_only = {"input_ids": torch.tensor([[1, 2, 0]]), "attention_mask": torch.tensor([[True, True, False]])}
    stats = pl.train_one_epoch(model, [specials_only, batch([10, 8])], opt, None, "cpu",
                               generator=torch.Generator().manual_seed(0))
    assert stats["steps"] == 2 and stats["masked_tokens"] > 0


def test_optimizer_is_fused_only_with_every_parameter_on_cuda_and_precision_rule():
    model = tr.MIDITransformerEncoder(tiny_config())
    assert not pl.make_optimizer(model, 1e-3, 0.1).defaults.get("fused")
    assert pl.autocast_dtype("auto", "cpu") is None and pl.autocast_dtype("fp32", "cpu") is None
    assert pl.autocast_dtype("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        pl.autocast_dtype("fp16", "cpu")


def test_a_rerun_with_more_epochs_stretches_the_schedule():
    from training.pretrain_worker import resume_scheduler

    model = tr.MIDITransformerEncoder(tiny_config())
    opt = pl.make_optimizer(model, 1e-3, 0.1)
    first = pl.make_scheduler(opt, total_steps=4, warmup=1)
    for _ in range(4):
        opt.step()
        first.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)  # the first run ended its cosine
    longer = pl.make_scheduler(opt, total_steps=8, warmup=1)
    resume_scheduler(longer, first.state_dict())
    assert longer.last_epoch == 4 and longer.lr_lambdas[0].total_steps == 8
    opt.step()
    longer.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * pl.WarmupCosine(8, 1)(5))


# -- DDP: a rank without a masked token does not leave the other waiting -------------------------
def _ddp_rank(rank: int, port: int, out: str) -> None:
    import datetime

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    torch.manual_seed(0)
    model = DistributedDataParallel(tr.MIDITransformerEncoder(tiny_config()))
    opt = pl.make_optimizer(model, 1e-3, 0.1)
    specials_only = {"input_ids": torch.tensor([[1, 2, 0]]), "attention_mask": torch.tensor([[True, True, False]])}
    loader = [batch([10, 8], seed=1), specials_only if rank == 1 else batch([9, 7], seed=2)]
    stats = pl.train_one_epoch(model, loader, opt, None, "cpu", generator=torch.Generator().manual_seed(rank))
    torch.save({"stats": stats, "state": model.module.state_dict()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_rank_with_an_empty_batch_still_joins_the_all_reduce(tmp_path):
    import torch.multiprocessing as mp

    start = time.monotonic()
    mp.spawn(_ddp_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    assert time.monotonic() - start < 120
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["stats"]["steps"] == r1["stats"]["steps"] == 2
    for key in r0["state"]:  # the replicas stayed identical: both ranks stepped on averaged gradients
        assert torch.equal(r0["state"][key], r1["state"][key]), key


# -- placement -------------------------------------------------------------------------------------
def test_device_cpu_with_use_gpu_is_refused(tmp_path):
    from hydra import compose, initialize_config_module

    from ray_jobs.pretrain.config import PretrainConfigError, register_schema, validate

    register_schema()
    with initialize_config_module(config_module="ray_jobs.pretrain.configs", version_base=None):
        cfg = compose(config_name="config", overrides=[f"output_dir={tmp_path}", "device=cpu", "ray.use_gpu=true",
                                                       "train.precision=fp16", "train.loader_workers=-2"])
    with pytest.raises(PretrainConfigError) as err:
        validate(cfg)
    assert "device=cpu contradicts ray.use_gpu=true" in str(err.value)
    assert "train.precision must be auto, fp32 or bf16" in str(err.value) and "train.loader_workers" in str(err.value)


def _cfg(tmp_path, *overrides):
    from hydra import compose, initialize_config_module

    from ray_jobs.pretrain.config import register_schema

    register_schema()
    with initialize_config_module(config_module="ray_jobs.pretrain.configs", version_base=None):
        return compose(config_name="config", overrides=[f"output_dir={tmp_path}", *overrides])


def test_plan_pins_workers_and_tasks_to_the_driver_node(ray_session, tmp_path, monkeypatch):
    from ray_jobs.pretrain.placement import NODE_LABEL, PlacementError, plan

    if ray_session.cluster_resources().get("GPU", 0):
        pytest.skip("this check needs a Ray session without GPUs")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    driver_node = ray_session.get_runtime_context().get_node_id()
    placement = plan(_cfg(tmp_path, "ray.num_workers=2"))
    assert placement.node_id == driver_node and not placement.use_gpu
    assert placement.scaling_config().label_selector == {NODE_LABEL: driver_node}
    strategy = placement.task_options()["scheduling_strategy"]
    assert strategy.node_id == driver_node and strategy.soft is False

    @ray_session.remote
    def where() -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    assert ray_session.get(where.options(**placement.task_options()).remote()) == driver_node
    assert plan(_cfg(tmp_path, "ray.pin_to_driver_node=false")).node_id is None
    with pytest.raises(PlacementError, match=r"^device=cuda: the driver's node .* has 0 GPU\(s\)"):
        plan(_cfg(tmp_path, "device=cuda"))
    with pytest.raises(PlacementError, match=r"ray.num_workers=3: .* has 2 CPU\(s\) and each worker takes one"):
        plan(_cfg(tmp_path, "ray.num_workers=3"))
    # a remote cluster without the pin may still grow (an autoscaler): warn and go on
    monkeypatch.setenv("RAY_ADDRESS", "ray-head.example:6379")
    assert plan(_cfg(tmp_path, "ray.use_gpu=true", "ray.pin_to_driver_node=false")).use_gpu


def test_local_gpu_check_names_the_key_that_asked(tmp_path):
    from ray_jobs.pretrain.placement import PlacementError, check_local_gpus

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    check_local_gpus(_cfg(tmp_path))  # CPU workers: nothing to check
    with pytest.raises(PlacementError, match=r"^device=cuda: this machine has no GPU .* or set device=auto or device=cpu$"):
        check_local_gpus(_cfg(tmp_path, "device=cuda"))


def test_use_gpu_without_a_gpu_fails_at_once_in_one_line(tmp_path):
    """The job as a user runs it: exit 2 and one line naming ray.use_gpu, before the tokenizer is trained."""
    import pandas as pd

    from tests.midi_model_factory import write_tiny_midis

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    root = tmp_path / "data" / "raw" / "tiny"
    files = write_tiny_midis(root / "midi", n=3)
    pd.DataFrame({"id": [f.stem for f in files], "audio_filename": "", "midi_filename": [f"midi/{f.name}" for f in files],
                  "split": ["train", "validation", "test"]}).to_csv(root / "info.csv", index=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ray_jobs.pretrain", f"dataset.data_root={tmp_path / 'data'}",
                           "dataset.name=tiny", "dataset.vocab_size=600", f"output_dir={tmp_path / 'out'}",
                           "ray.use_gpu=true"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    assert lines[0].startswith("error: ray.use_gpu=true: this machine has no GPU that PyTorch can use"), lines[0]
    assert "ray.use_gpu=false" in lines[0] and "Ray instance is local" in lines[0]
    assert not (tmp_path / "data" / "tokenizers").exists(), "the tokenizer was trained before the check"
    assert seconds < 240


# -- CUDA ------------------------------------------------------------------------------------------
def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return torch.device("cuda")


@pytest.mark.gpu
def test_cuda_epoch_steps_without_a_host_sync(monkeypatch):
    """Every step of ``train_one_epoch`` on CUDA (copies in, forward, loss, clipping, fused AdamW) runs
    under ``set_sync_debug_mode("error")``; only autograd's backward is exempt (PyTorch's own
    kernels, e.g. the embedding gradient, may synchronise inside); the loss is read once at the end."""
    device = _cuda()
    torch.manual_seed(0)
    model = tr.MIDITransformerEncoder(tiny_config()).to(device)
    opt = pl.make_optimizer(model, 1e-3, 0.1)
    assert opt.defaults["fused"] is True
    pl.train_one_epoch(model, batches()[:1], opt, None, device, generator=torch.Generator().manual_seed(9))  # warm-up

    def guarded(loader):
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from loader
        finally:
            torch.cuda.set_sync_debug_mode(0)

    backward = torch.Tensor.backward

    def unguarded_backward(self, *args, **kwargs):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return backward(self, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(torch.Tensor, "backward", unguarded_backward)
    loop = [b for b in batches() for _ in range(2)] + [batch([24, 24, 24], seed=8)]  # one without padding
    stats = pl.train_one_epoch(model, guarded(loop), opt, None, device, generator=torch.Generator().manual_seed(1))
    assert stats["steps"] == len(loop) and stats["loss"] == stats["loss"]


@pytest.mark.gpu
def test_cuda_fp32_and_bf16_against_cpu_fp32():
    """Same weights, same fixed masks: CUDA fp32 (TF32 off) within 1e-4 relative of CPU fp32, bf16 within 2%."""
    device = _cuda()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = tr.MIDITransformerEncoder(tiny_config(dropout=0.0))
    cpu = pl.evaluate(model, batches(), "cpu", generator_seed=3)
    gpu_model = copy.deepcopy(model).to(device)
    fp32 = pl.evaluate(gpu_model, batches(), device, generator_seed=3)
    bf16 = pl.evaluate(gpu_model, batches(), device, generator_seed=3, amp_dtype=torch.bfloat16)
    assert fp32["masked_tokens"] == cpu["masked_tokens"] == bf16["masked_tokens"]
    assert fp32["loss"] == pytest.approx(cpu["loss"], rel=1e-4)
    assert bf16["loss"] == pytest.approx(cpu["loss"], rel=2e-2)
    assert pl.autocast_dtype("auto", device) == (torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False)
                                                 else None)


@pytest.mark.gpu
def test_cpu_checkpoint_resumes_on_cuda_with_fused_adamw(tmp_path):
    device = _cuda()
    torch.manual_seed(0)
    model = tr.MIDITransformerEncoder(tiny_config())
    opt = pl.make_optimizer(model, 1e-3, 0.1)
    pl.train_one_epoch(model, batches(), opt, None, "cpu", generator=torch.Generator().manual_seed(0))
    torch.save({"optimizer": opt.state_dict(), "model": model.state_dict()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    resumed = tr.MIDITransformerEncoder(tiny_config()).to(device)
    resumed.load_state_dict(state["model"])
    fused = pl.make_optimizer(resumed, 1e-3, 0.1)
    fused.load_state_dict(state["optimizer"])
    stats = pl.train_one_epoch(resumed, batches(), fused, None, device, generator=torch.Generator().manual_seed(1))
    assert stats["steps"] == 3 and stats["loss"] == stats["loss"]  # finite, no device mismatch
    assert all(s["exp_avg"].is_cuda for s in fused.state.values())
