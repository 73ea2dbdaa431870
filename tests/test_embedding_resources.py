"""What the embedding job asks Ray for, and where it runs: no Ray instance needed."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from embedders.registry import get_embedder_class
from ray_jobs.generate_embeddings import execute, job
from ray_jobs.generate_embeddings import resources as res
from ray_jobs.generate_embeddings.resources import ClusterView, Pool, ResourceError, cpu_pool, gpu_pool, uses_gpu
from tests.factory import make_dataset

LOCAL_CPU = ClusterView(named=False, cpus_now=2, gpus_now=0, cpus_max=2, gpus_max=0, autoscaler_config=False)


@pytest.mark.parametrize("name, gpu", [("melstats", False), ("pianoroll", False), ("openl3", True), ("clap", True),
                                       ("clamp", True), ("midi_transformer", True)])
def test_only_accelerator_embedders_request_gpus(name, gpu):
    cls = get_embedder_class(name)
    assert uses_gpu(cls, 1.0) is gpu
    assert uses_gpu(cls, 0.0) is False


def test_a_local_run_without_gpus_fails_with_the_reason():
    with pytest.raises(ResourceError, match=r"^a/b: --num_gpus 0.5 per embedding actor, but this machine has 0 GPU"
                                            r".*RAY_ADDRESS is not set"):
        gpu_pool("a/b", 0.5, 0.25, None, LOCAL_CPU)
    one_gpu = dataclasses.replace(LOCAL_CPU, gpus_now=1, gpus_max=1)
    with pytest.raises(ResourceError, match="has 1 GPU"):
        gpu_pool("a/b", 2, 0.25, None, one_gpu)  # two GPUs per actor on a one-GPU machine


def test_gpu_pool_from_potential_resources():
    one_gpu = dataclasses.replace(LOCAL_CPU, gpus_now=1, gpus_max=1)
    assert gpu_pool("m", 0.5, 0.25, None, one_gpu) == Pool(1, 2, 0.25, 0.5, None)
    assert gpu_pool("m", 0.5, 0.1, 1, one_gpu) == Pool(1, 1, 0.1, 0.5, None)  # --max_actors, --actor_cpus
    # an autoscaling cluster with one GPU node up and room for eight GPUs: sized for eight, with a note
    scaling = ClusterView(named=True, cpus_now=4, gpus_now=1, cpus_max=64, gpus_max=8, autoscaler_config=True)
    pool = gpu_pool("m", 1, 0.25, None, scaling)
    assert (pool.min_size, pool.max_size) == (1, 8)
    assert pool.note == "m: 1 GPU actor(s) fit now; the pool grows to 8 only as the autoscaler adds GPU nodes"
    # no GPU node yet: the job waits for one, and says so
    cold = dataclasses.replace(scaling, gpus_now=0)
    assert "no GPU in the cluster now; the job waits until GPU nodes join" in gpu_pool("m", 1, 0.25, None, cold).note
    # a named cluster without an autoscaler config may still gain GPU nodes: not refused
    static = ClusterView(named=True, cpus_now=4, gpus_now=0, cpus_max=4, gpus_max=0, autoscaler_config=False)
    assert gpu_pool("m", 1, 0.25, None, static).note.startswith("m: no GPU in the cluster now")
    # but an autoscaler config that allows no GPU at all is a refusal
    with pytest.raises(ResourceError, match="autoscaler config allows at most 0 GPU"):
        gpu_pool("m", 1, 0.25, None, dataclasses.replace(static, autoscaler_config=True))


def test_cpu_pool():
    assert cpu_pool("c", None, 100, LOCAL_CPU) == Pool(2, 2, 1.0, 0.0, None)
    assert cpu_pool("c", None, 1, LOCAL_CPU) == Pool(1, 1, 1.0, 0.0, None)  # never more actors than calls
    assert cpu_pool("c", 8, 100, LOCAL_CPU).max_size == 2  # a local instance never grows
    scaling = ClusterView(named=True, cpus_now=4, gpus_now=0, cpus_max=32, gpus_max=0, autoscaler_config=True)
    pool = cpu_pool("c", None, 100, scaling)
    assert (pool.min_size, pool.max_size) == (4, 32) and "grows to 32" in pool.note


def test_cluster_view_reads_the_autoscaler_limits(monkeypatch):
    import ray
    from ray._private.state import state

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "GPU": 1.0})
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"CPU": 64, "GPU": 8})
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert res.cluster_view() == ClusterView(True, 4.0, 1.0, 64.0, 8.0, True)
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS")
    assert res.cluster_view() == ClusterView(False, 4.0, 1.0, 4.0, 1.0, False)


def runs(n_pending: int, gpu: bool = False) -> list[execute.MediumRun]:
    rows = [{"id": f"r{k}", "path": "x"} for k in range(n_pending)]
    return [execute.MediumRun(None, None, {}, pending=rows, gpu=gpu)]  # type: ignore[arg-type]


def test_auto_executor_rule(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = argparse.Namespace(executor="auto", local_max_rows=100)
    assert execute.choose_executor(runs(100), args) == "local"
    assert execute.choose_executor(runs(101), args) == "ray"  # above the size
    assert execute.choose_executor(runs(10, gpu=True), args) == "ray"  # GPUs requested
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert execute.choose_executor(runs(10), args) == "local"  # "local" names no cluster
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert execute.choose_executor(runs(10), args) == "ray"  # a cluster is named
    for explicit in ("local", "ray"):
        assert execute.choose_executor(runs(10_000), argparse.Namespace(executor=explicit, local_max_rows=1)) == explicit


def test_rows_per_call():
    assert execute.rows_per_call(400, 2, 256) == 50  # a few calls per worker
    assert execute.rows_per_call(10_000, 2, 256) == 256  # at most a part
    assert execute.rows_per_call(3, 2, 256) == 1


def test_local_executor_refuses_gpus_before_any_work(tmp_path, capsys, tmp_path_factory):
    from tests.midi_model_factory import tiny_checkpoint

    make_dataset(tmp_path / "raw" / "toy", n=2, seconds=1.0)
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))
    assert job.main(["--dataset", "toy", "--data_root", str(tmp_path), "--media", "symbolic_embeddings",
                     "--symbolic_embedder", "midi_transformer", "--symbolic_checkpoint", str(checkpoint),
                     "--num_gpus", "1", "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--executor local runs no GPU actors" in err
    assert not (tmp_path / "embeddings").exists()


def test_impossible_gpus_stop_main_before_the_store_is_touched(tmp_path, capsys, tmp_path_factory, monkeypatch):
    """The check runs right after Ray starts (here a stand-in: a local instance without GPUs)."""
    from tests.midi_model_factory import tiny_checkpoint

    make_dataset(tmp_path / "raw" / "toy", n=2, seconds=1.0)
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))
    monkeypatch.setattr(job, "start_ray", lambda args: 0.0)
    monkeypatch.setattr(job, "cluster_view", lambda: LOCAL_CPU)
    assert job.main(["--dataset", "toy", "--data_root", str(tmp_path), "--media", "symbolic_embeddings",
                     "--symbolic_embedder", "midi_transformer", "--symbolic_checkpoint", str(checkpoint),
                     "--num_gpus", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this machine has 0 GPU(s)" in err
    assert not (tmp_path / "embeddings").exists()


def test_helpers_are_forked_only_where_that_is_safe(monkeypatch):
    import sys
    import types

    from ray_jobs.generate_embeddings.local import start_method

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False))
    assert start_method(remote=False) == "fork"
    assert start_method(remote=True) == "spawn"  # an object-store client's threads
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    assert start_method(remote=False) == "spawn"  # a Ray driver (the demo's shared session)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False))
    monkeypatch.setattr(sys, "platform", "darwin")
    assert start_method(remote=False) == "spawn"
