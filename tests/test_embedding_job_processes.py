"""The embedding job in processes of its own: a Ray instance with a logical GPU, and its console.

Each test starts its own Ray instance in a subprocess (the shared test session has no GPU and is
already initialised, and a job's console is that of its own process), so these are slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from embedders.registry import get_embedder_class
from embedders.store.parts import part_files
from ray_jobs.generate_embeddings import job as generate_embeddings
from tests import embedding_spies
from tests.factory import make_dataset
from tests.job_processes import RAY_INFO, kill_session

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
S = "symbolic_embeddings"

# The driver of the GPU-layout runs: Ray with 2 CPUs and 1 logical GPU (no CUDA behind it), the
# spy hook in every worker, and Dataset.map_batches recorded to see what each stage asks for. It
# leaves with os._exit once the stores are written: the test SIGKILLs its process session (Ray's
# daemons and workers) instead of waiting seconds for ray.shutdown of a throwaway instance.
GPU_SCRIPT = r"""
import json, os, shutil, sys
import ray, ray.data
root, ckpt, spies = sys.argv[1:4]
ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
         runtime_env={"worker_process_setup_hook": "tests.embedding_spies.install"})
asked = []
real = ray.data.Dataset.map_batches
def spy(self, fn, **kw):
    asked.append([getattr(fn, "__name__", str(fn)), kw.get("num_gpus"), kw.get("num_cpus")])
    return real(self, fn, **kw)
ray.data.Dataset.map_batches = spy
from ray_jobs.generate_embeddings import job
base = ["--dataset", "toy", "--batch_size", "2", "--executor", "ray", "--media", "symbolic_embeddings",
        "--symbolic_embedder", "midi_transformer", "--symbolic_checkpoint", ckpt]
out = {"gpu": job.main([*base, "--data_root", root + "/gpu", "--num_gpus", "0.5", "--symbolic_option", "device=cpu"])}
out["gpu_asked"] = list(asked)
shutil.copytree(spies, spies + "_gpu")  # the GPU-layout run's calls, before the auto run adds its own
out["auto"] = job.main([*base, "--data_root", root + "/auto", "--num_gpus", "0.5"])
out["auto_rerun"] = job.main([*base, "--data_root", root + "/auto", "--num_gpus", "0.5"])
print("RESULT " + json.dumps(out), flush=True)
sys.stderr.flush()
os._exit(0)
"""
GONE = {"id": "gone", "audio_filename": "audio/rec0.wav", "midi_filename": "midi/gone.mid", "style": "x", "bpm": 1,
        "split": "train"}


def job_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_DATA_DISABLE_PROGRESS_BARS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO), **extra)
    return env


def h5_group(path, group):
    with h5py.File(path) as f:
        return {k: f[group][k][...] for k in ("average", "sequence", "sequence_offsets", "valid")}


def test_gpu_layout_on_a_logical_gpu(tmp_path, tmp_path_factory):
    """--num_gpus on a Ray instance declaring one GPU, the embedder forced to device=cpu: the GPU
    layout runs (decode+prepare tasks, then GPU actors of 0.5 GPU and 0.25 CPU that only batch
    prepared items) and stores what the CPU layout stores. With device=auto the driver assumes CUDA
    (bf16) while the actor finds none (CPU fp32): rows carry the actor's hash, and a rerun resumes.

    The CPU layout's reference is the local executor in this process (it stores what Ray's CPU
    layout stores: test_generate_embeddings.test_local_and_ray_executors_write_the_same_store),
    run while the subprocess starts Ray."""
    if not sys.platform.startswith("linux"):
        pytest.skip("process bookkeeping reads /proc")
    from tests.midi_model_factory import tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))
    for name, extra in (("gpu", [GONE]), ("cpu", [GONE]), ("auto", [])):  # auto: nothing left for its rerun to do
        make_dataset(tmp_path / name / "raw" / "toy", n=5, seconds=1.0, extra_rows=extra)
    spies = tmp_path / "spies"
    spies.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", GPU_SCRIPT, str(tmp_path), str(checkpoint), str(spies)], cwd=REPO,
                            env=job_env(**{embedding_spies.SPY_DIR: str(spies)}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        cpu_exit = generate_embeddings.main(["--dataset", "toy", "--batch_size", "2", "--executor", "local",
                                             "--media", S, "--symbolic_embedder", "midi_transformer",
                                             "--symbolic_checkpoint", str(checkpoint), "--data_root",
                                             str(tmp_path / "cpu"), "--symbolic_option", "device=cpu"])
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        proc.kill()  # only if still running: a failed assertion or a timeout above
        proc.wait()
        kill_session(proc.pid)  # Ray's daemons and workers, left by os._exit
    assert cpu_exit == 0
    result = next((json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")), None)
    assert result is not None, stdout[-3000:] + stderr[-3000:]
    assert {k: result[k] for k in ("gpu", "auto", "auto_rerun")} == {"gpu": 0, "auto": 0, "auto_rerun": 0}
    # what Ray Data was asked for: CPU tasks for decode+prepare, then GPU actors with a quarter CPU
    assert result["gpu_asked"] == [["prepare_batch", None, 1], ["PartsActor", 0.5, 0.25]]
    calls = embedding_spies.read(str(spies) + "_gpu")
    prepare_pids = {pid for kind, pid, _ in calls if kind == "prepare"}
    embed = [(pid, rest) for kind, pid, rest in calls if kind == "embed"]
    assert prepare_pids and embed and all(rest == "prepared=True" for _, rest in embed), calls
    assert prepare_pids.isdisjoint(pid for pid, _ in embed), "prepare ran in an embedding actor"
    group = f"{S}/midi_transformer"
    gpu, cpu = (h5_group(tmp_path / n / "embeddings/toy/embeddings.h5", group) for n in ("gpu", "cpu"))
    for key in ("valid", "sequence_offsets"):
        np.testing.assert_array_equal(gpu[key], cpu[key], err_msg=key)
    for key in ("average", "sequence"):  # batches group other items together: float32 summation order only
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert cpu["valid"].tolist() == [1, 1, 1, 1, 1, 0]
    errors = pd.read_parquet(tmp_path / "gpu/embeddings/toy/errors.parquet")
    assert errors[["id", "stage", "error_type"]].values.tolist() == [["gone", "decode", "MissingFileError"]]

    # device=auto: requested hash (CUDA, bf16) != the actor's (CPU, fp32), which is the cpu run's
    cls = get_embedder_class("midi_transformer")
    config = cls.make_config(checkpoint=str(checkpoint))
    requested, resolved = cls.hash_config(config, cuda=True), cls.hash_config(config, cuda=False)
    assert requested != resolved
    auto = tmp_path / "auto/embeddings/toy"
    stored = {h for p in part_files(auto, S, "midi_transformer") for h in pq.read_table(p).column("config_hash").to_pylist()}
    assert stored == {resolved}
    summary = json.loads((auto / "summary.json").read_text())["media"][S]  # of the rerun
    assert (summary["requested_config_hash"], summary["config_hash"]) == (requested, resolved)
    assert (summary["skipped"], summary["done"], summary["failed"]) == (5, 0, 0)
    assert "the embedding workers resolved device/precision otherwise than assumed" in stdout
    auto_rows = h5_group(auto / "embeddings.h5", group)
    assert auto_rows["valid"].tolist() == [1] * 5
    for key in ("average", "sequence"):  # the same rows as the CPU reference's first five ("gone" has no frames)
        want = cpu[key][: len(auto_rows[key])]
        np.testing.assert_allclose(auto_rows[key], want, rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(auto_rows["sequence_offsets"], cpu["sequence_offsets"][: len(auto_rows["sequence_offsets"])])


def test_console_is_quiet_unless_verbose(tmp_path):
    """Without --verbose: no Ray log line or known Ray noise, only the job's own lines. That RAY_INFO
    finds Ray's lines when they are shown is checked on a --verbose run in
    test_embedding_job_kill.py (its [ray] case runs the job in a process of its own too)."""
    make_dataset(tmp_path / "raw" / "toy", n=4, seconds=1.0)
    cmd = [sys.executable, "-m", "ray_jobs.generate_embeddings", "--dataset", "toy", "--data_root", str(tmp_path),
           "--num_cpus", "2", "--executor", "ray"]
    quiet = subprocess.run(cmd, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    text = quiet.stdout + quiet.stderr
    assert not [line for line in text.splitlines() if RAY_INFO.search(line)], text
    for noise in ("constructor arguments in the object store", "Progress bars disabled", "deprecated"):
        assert noise not in text, text
    assert "audio_embeddings/melstats: 4/4 rows (100%)" in quiet.stdout  # the job's own progress line
    assert "symbolic_embeddings/pianoroll: 4/4 rows (100%)" in quiet.stdout
