"""bench/gpu_check.py: its dry mode end to end (``bench`` marker), and its robustness on its own.

The dry run is the whole check on the CPU at small sizes: every check must pass and name the CUDA
parts it skipped. The fast tests check that a failing step is recorded and the check goes on, that
a check over its budget is killed with its partial figures kept, and the JSON and table that follow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


def test_a_failing_step_is_recorded_and_the_check_goes_on(tmp_path):
    from bench.gpu_check import Recorder

    rec = Recorder(tmp_path / "partial.json")
    with rec.step("breaks"):
        raise ValueError("bad input for the step")
    with rec.step("works"):
        rec.set("figure", 3)
    saved = json.loads((tmp_path / "partial.json").read_text())
    assert saved["figures"] == {"figure": 3}
    assert [e["step"] for e in saved["errors"]] == ["breaks"]
    assert saved["errors"][0]["error"] == "ValueError: bad input for the step"
    assert "raise ValueError" in saved["errors"][0]["traceback"] and set(saved["step_seconds"]) == {"breaks", "works"}


def test_front_end_and_cosine_figures():
    import numpy as np
    import torch

    from bench.gpu_check import _cosines, _db_difference

    a = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    b = np.array([[1.0, 1.0], [0.0, 3.0]], dtype=np.float32)
    cos = _cosines([a], [b])
    assert cos["frames"] == 2 and cos["min"] == pytest.approx(1 / np.sqrt(2), abs=1e-6) and cos["median"] < 1
    with pytest.raises(ValueError, match="frame shapes differ"):
        _cosines([a], [b[:1]])
    cpu = [torch.zeros(2, 1, 4), torch.zeros(1, 1, 4)]  # batches of 2 + 1 windows; then a second pass
    gpu = [torch.cat([torch.zeros(2, 1, 4), torch.full((1, 1, 4), 2.0)]), torch.full((3, 1, 4), 9.0)]
    db = _db_difference(cpu, gpu, windows=3)  # only the first 3 windows (the same audio) are compared
    assert db["windows"] == 3 and db["max_abs_db"] == 2.0 and db["share_over_1db"] == pytest.approx(1 / 3)


def test_a_check_over_its_budget_is_killed_and_reported(tmp_path):
    """``_hang`` (a self-test check: a child process sleeping 10 minutes) gets 12 s (40 s x 0.3) and is
    killed with its child; ``environment`` gets 9 s, under the 10 s a check needs, so it is not run;
    the JSON and the table say both."""
    out, work = tmp_path / "gpu_check.json", tmp_path / "work"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry_run", "--only", "environment,_hang",
                           "--out", str(out), "--work", str(work), "--budget_scale", "0.3"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    result = json.loads(out.read_text())
    assert done.returncode == 1, done.stderr[-2000:]
    checks = result["checks"]
    assert checks["environment"]["status"] == "not_run"
    assert checks["_hang"]["status"] == "timeout" and checks["_hang"]["budget_s"] == pytest.approx(12.0)
    assert 12 <= checks["_hang"]["seconds"] < 60
    assert "killed after its budget" in checks["_hang"]["errors"][-1]["error"]
    assert checks["_hang"]["figures"]["started"] is True  # recorded before it was killed
    assert "_hang" in done.stdout and "timeout" in done.stdout  # the summary table
    left = [p for p in Path("/proc").glob("[0-9]*") if str(work) in _cmdline(p)]
    assert not left, "the child of the killed check outlived it"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.bench
@pytest.mark.timeout(3300)  # the dry run's own limit below is 3000 s
def test_dry_run_end_to_end(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry_run", "--out", str(out), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, cwd=REPO, timeout=3000)
    result = json.loads(out.read_text())
    checks = result["checks"]
    failed = {k: c["errors"] for k, c in checks.items() if c["status"] != "ok"}
    assert done.returncode == 0 and not failed, json.dumps(failed, indent=1)[:4000]
    assert result["dry_run"] and set(checks) == {
        "environment", "gpu_tests", "embedder:openl3", "embedder:clap", "embedder:clamp", "embedder:midi_transformer",
        "embedder:musicnn", "embedder:basic_pitch", "embedding_job", "pretrain", "pretrain_steps", "sweep"}
    for name in ("openl3", "clap", "clamp", "midi_transformer", "musicnn"):
        f = checks[f"embedder:{name}"]["figures"]
        assert f["cpu_fp32"]["windows_per_s"] > 0 and f["cpu_fp32"]["frames"] >= 1
        assert any("on CUDA" in s for s in checks[f"embedder:{name}"]["skipped_cuda"])
    assert checks["embedder:openl3"]["figures"]["front_end_module"] == "speclayer"
    assert "onnxruntime" in checks["embedder:basic_pitch"]["figures"]["note"]
    job = checks["embedding_job"]["figures"]
    assert job["rows_embedded"] == {"audio_embeddings": 2, "symbolic_embeddings": 3} and job["corrupt_in_errors"]
    runs = checks["pretrain"]["figures"]["runs"]
    assert runs["default_cpu"]["epochs"] == [0] and runs["default_resumed"]["epochs"] == [0, 1]
    assert runs["default_resumed"]["tokens_per_s_by_epoch"][-1] > 0
    assert runs["default_resumed"]["val_loss"] != runs["default_cpu"]["val_loss"]  # it trained on
    no_gpu = checks["pretrain"]["figures"]["use_gpu_without_gpu"]
    assert no_gpu["exit_code"] == 2 and no_gpu["stderr_lines"] == 1 and "ray.use_gpu=true" in no_gpu["message"]
    steps = checks["pretrain_steps"]["figures"]["steps"]
    assert steps["fp32"]["tokens_per_s"] > 0 and steps["bf16_autocast"]["tokens_per_s"] > 0
    assert checks["sweep"]["figures"]["sweep"]["exit_code"] == 0
    for name in ("embedding_job", "pretrain", "pretrain_steps", "sweep"):
        assert checks[name]["skipped_cuda"], name
    assert all(name in done.stdout for name in checks)  # the summary table
