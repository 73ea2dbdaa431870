"""The bench scripts run at tiny sizes and print one JSON object with the keys the tables of docs/benchmarks.md read.

No timing is asserted: these check that the scripts work, not how fast the machine is. They are the
benchmark scripts end to end, so all of them carry the ``bench`` marker: off the default test run
(tests/conftest.py deselects them), run by ``make bench`` (``pytest -m bench``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.bench
REPO = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str, timeout: int = 600) -> dict:
    out = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                         cwd=REPO, timeout=timeout)
    assert out.returncode == 0, f"{script} failed:\n{out.stderr[-4000:]}"
    result = json.loads(out.stdout)  # stdout holds the JSON object and nothing else
    assert {"cpu_model", "cores", "ram_gib", "load_avg_start", "load_avg_end"} <= set(result["machine"])
    return result


def test_tokenization_bench(tmp_path):
    from tests.midi_model_factory import write_tiny_midis

    write_tiny_midis(tmp_path / "midi", n=5)
    r = bench("tokenization.py", "--source", str(tmp_path / "midi"), "--files", "5", "--train_files", "5",
              "--vocab_size", "600", "--repeats", "2")
    assert r["files"] == 5 and r["files_tokenized"] == 5 and r["tokens"] > 0
    assert r["paths"]["symusic"]["files_per_s"] > 0 and set(r["paths"]["symusic"]["ms_per_file_by_stage"]) == {
        "parse", "encode", "chunk"}
    if "miditoolkit" in r["paths"]:  # only where miditoolkit is installed (not a project dependency)
        assert r["identical_ids_files"] == 5 and r["speedup_symusic_vs_miditoolkit"] > 0
    else:
        assert "not installed" in r["miditoolkit"]


@pytest.mark.bench
def test_compare_scale_bench_sizes():
    r = bench("compare_scale.py", "--sizes", "120,240", "--dim", "16", "--n-permutations", "9", "--n-boot", "9",
              "--max-n-kernel", "100")
    assert [row["n"] for row in r["table"]] == [120, 240] and r["label"] is True
    assert all(row["peak_rss_mb"] > 0 and row["seconds_total"] > 0 for row in r["table"])
    assert set(r["growth"]["120->240"]) == {"n_ratio", "time_ratio", "time_exponent", "peak_rss_ratio"}
    size = r["sizes"][0]
    base = size["baseline_plain_cka"]
    assert base["value"] == pytest.approx(base["suite_value"], rel=1e-4)  # the baseline computes the same CKA
    # what the job runs with --label: within-label nulls, the label metrics, and the plain CKA with both nulls
    assert size["values"]["linear_cka_debiased"]["n_used"] == 120 and size["labels"]["audio"]["knn"] > 0
    assert size["primary"]["p_within"] is not None  # compare_spaces got the label as strata
    assert size["baseline_plain_cka_within"]["seconds"] > 0
    assert set(size["ratios"]) == {"wall", "cpu"} and size["clock"] == "cpu"
    assert {"compare_spaces", "compare_labels", "baseline_free", "baseline_within"} <= set(size["totals_s"]["cpu"])
    assert size["suite_vs_plain_cka"] >= size["suite_vs_plain_cka_same_nulls"] > 0


@pytest.mark.slow
def test_embedding_throughput_bench(tmp_path):
    from tests.factory import make_dataset

    root = tmp_path / "src"
    (root / "audio").mkdir(parents=True)
    (root / "midi").mkdir()
    make_dataset(root, n=3, seconds=2.0)
    r = bench("embedding_throughput.py", "--source", str(root), "--sizes", "4", "--probe_rows", "2",
              "--work", str(tmp_path / "work"))
    (size,) = r["sizes"]
    assert size["rows"] == 4 and size["data"]["duplicated_rows"] == 1  # 3 works, one reused under a new id
    for run in ("job", "job_ray"):
        assert size[run]["done"] == {"audio_embeddings": 4, "symbolic_embeddings": 4}
        assert size[run]["max_abs_difference_vs_sequential"] == {"audio_embeddings/melstats": 0.0,
                                                                 "symbolic_embeddings/pianoroll": 0.0}
    assert (size["job"]["executor"], size["job_ray"]["executor"]) == ("local", "ray")  # auto picks local here
    assert size["sequential"]["rows_embedded"] == {"audio_embeddings": 4, "symbolic_embeddings": 4}
    assert set(size["sequential"]["stage_seconds"]) == {"decode_audio", "embed_audio", "decode_midi", "embed_midi", "write"}
    assert set(size["recordings_per_s"]) == {"sequential", "job", "job_ray", "cpu_bound"}
    assert size["audio_seconds_per_s"]["job"] > 0
    assert size["job"]["memory"]["peak_driver_rss_mb"] > 0 and size["job_ray"]["memory"]["peak_ray_worker_rss_mb"] > 0
    assert 0 < size["job_ray"]["startup_share"] < 1 and size["job_ray"]["breakdown_s"]["ray_start_s"] > 0
    assert r["targets"] == {}  # 4 rows: no target of issue 19
    assert set(r["scaling_probe"]["scaling_2_processes"]) >= {"decode_audio", "embed_audio", "total"}


@pytest.mark.slow
def test_pretrain_throughput_bench(tmp_path):
    from tests.midi_model_factory import write_tiny_midis

    root = tmp_path / "tiny"
    files = write_tiny_midis(root / "midi", n=8)
    pd.DataFrame({"id": [f.stem for f in files], "audio_filename": [f"audio/{f.stem}.wav" for f in files],
                  "midi_filename": [f"midi/{f.name}" for f in files], "composer": ["a", "b"] * 4,
                  "split": ["train"] * 4 + ["validation"] * 2 + ["test"] * 2}).to_csv(root / "info.csv", index=False)
    r = bench("pretrain_throughput.py", "--source", str(root), "--workers", "1", "--bucket", "off,on", "--epochs", "1",
              "--limit", "4", "--vocab_size", "600", "--max_seq_len", "32", "--embed_dim", "16", "--nhead", "2",
              "--num_layers", "1", "--batch_size", "2", "--num_cpus", "2",
              "--precision_device", "cpu", "--gpu_embed_dim", "16", "--gpu_nhead", "2", "--gpu_layers", "1",
              "--gpu_seq_len", "32", "--gpu_batch", "2", "--gpu_vocab", "100", "--gpu_steps", "3")
    runs = r["cpu"]["runs"]
    assert [(x["workers"], x["bucket_by_length"]) for x in runs] == [(1, False), (1, True)]
    assert all(x["tokens_per_s"] > 0 and x["samples_per_s"] > 0 and 0 <= x["padding_share"] < 1 for x in runs)
    assert runs[1]["padding_share"] <= runs[0]["padding_share"]
    assert "bucketed_vs_plain_1_workers" in r["cpu"]["ratios_tokens_per_s"]
    for precision in ("fp32", "bf16_autocast"):
        assert r["gpu"][precision]["tokens_per_s"] > 0


@pytest.mark.slow
def test_pretrained_cost_bench(tmp_path):
    """OpenL3 and CLAP at their real sizes on 2 s of audio, CLaMP's real encoder on two tiny files."""
    from tests.midi_model_factory import write_tiny_midis
    from tests.pretrained_factories import clap  # its extra: skipped without it, a failure under CI=true

    clap.require_extra()
    write_tiny_midis(tmp_path / "midi", n=2)
    r = bench("pretrained_cost.py", "--models", "openl3,clap,clamp", "--batch_sizes", "1,4", "--audio_seconds", "2",
              "--repeats", "1", "--midi_source", str(tmp_path / "midi"), "--midi_files", "2")
    for model in ("openl3", "clap"):
        rows = r[model]["by_batch_size"]
        assert set(rows) == {"1", "4"} and all(row["cpu_s_per_audio_minute"] > 0 for row in rows.values())
        assert rows["4"]["windows_per_call"] >= 4  # copies of the recording fill the batch
    assert r["openl3"]["by_batch_size"]["1"]["windows_per_call"] == 4  # 2 s at the 0.5 s hop
    assert r["clap"]["by_batch_size"]["4"]["audio_seconds_per_call"] == 8  # one 10 s window per 2 s copy
    assert all(row["cpu_s_per_file"] > 0 and row["files_per_call"] == 2 for row in r["clamp"]["by_batch_size"].values())


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the script's own limit below is 1200 s
def test_scale_write_bench():
    """Both write paths at two tiny sizes: the old one (git archive arch) sends every embedding to
    the driver, the new one none; the byte counts follow from rows x (frames + 1) x dim x 4."""
    r = bench("scale_write.py", "--sizes", "8,16", "--frames", "3", "--dim", "32", "--num_cpus", "2", timeout=1200)
    for path in ("old", "new"):
        for rows in ("8", "16"):
            run = r["paths"][path][rows]
            assert run["rows_done"] == int(rows) and run["embedding_bytes_written"] == int(rows) * 4 * 32 * 4
            assert run["rows_per_s"] > 0 and run["driver_peak_rss_mb"] > 0
    assert r["paths"]["old"]["16"]["driver_embedding_bytes"] == 16 * 3 * 32 * 4  # the sequences came to the driver
    assert r["checks"]["driver_bytes_fraction_max"] == 0.0
    assert set(r["checks"]["rows_per_s_new_over_old"]) == {"8", "16"}
