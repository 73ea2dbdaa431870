"""The demo chain end to end at a reduced size: music21 works -> paired dataset -> embeddings."""

import json

import h5py
import pandas as pd
import pytest

from ray_jobs import demo

pytestmark = pytest.mark.slow


def test_demo_builds_and_embeds_a_few_works_then_skips_on_rerun(ray_session, tmp_path):
    assert demo.main(["--data_root", str(tmp_path), "--limit", "4"]) == 0
    info = pd.read_csv(tmp_path / "raw/music21/info.csv")
    assert len(info) == 4 and info["composer"].nunique() == 4
    h5 = tmp_path / "embeddings/music21/embeddings.h5"
    with h5py.File(h5) as f:
        assert f["audio_embeddings/melstats/valid"][...].all()
        assert f["symbolic_embeddings/pianoroll/valid"][...].all()
        assert f["metadata/bpm"].dtype.kind in "if"  # a number, whole or not
    assert demo.main(["--data_root", str(tmp_path), "--limit", "4"]) == 0
    timings = json.loads((tmp_path / "embeddings/music21/demo_timings.json").read_text())
    assert set(timings.values()) == {0.0}, "a rerun must skip every finished stage"
