"""prepare_dataset --source maestro|slakh|lakh_matched on small copies of each corpus's public layout
made here (docs/datasets.md has the recipes)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from embedders.dataset import ABSENT, read_info_csv
from embedders.io import decode_audio, decode_midi
from ray_jobs.prepare_dataset import job as prep
from tests.factory import scale_notes, sine_wave, write_midi, write_wav


def media(root, rel_audio: str | None, rel_midi: str | None, k: int = 0) -> None:
    if rel_audio:
        write_wav(root / rel_audio, sine_wave(220 + 20 * k, 0.5))
    if rel_midi:
        write_midi(root / rel_midi, scale_notes(60 + k, n=2))


def run(tmp_path, source: str, *flags: str) -> int:
    return prep.main(["--source", source, "--dataset", source, "--data_root", str(tmp_path), *flags])


def assert_files_decode(root, info: pd.DataFrame) -> None:
    for row in info.itertuples():
        if row.audio_filename != ABSENT:
            decode_audio(root / row.audio_filename, 22050, row.id)
        if row.midi_filename != ABSENT:
            decode_midi(root / row.midi_filename, row.id)


# -- MAESTRO ---------------------------------------------------------------------------------------
def make_maestro(root):
    rows = [("Johann Sebastian Bach", "Prelude", "train", 2004, "2004/MIDI-Unprocessed_01_R1_2004_wav--1"),
            ("Frédéric Chopin", "Ballade", "test", 2006, "2006/MIDI-Unprocessed_02_R1_2006_wav--2"),
            ("Franz Liszt", "Etude", "validation", 2008, "2008/MIDI-Unprocessed_03_R1_2008_wav--3")]
    table = []
    for k, (composer, title, split, year, stem) in enumerate(rows):
        media(root, f"{stem}.wav", f"{stem}.midi", k)
        table.append({"canonical_composer": composer, "canonical_title": title, "split": split, "year": year,
                      "midi_filename": f"{stem}.midi", "audio_filename": f"{stem}.wav", "duration": 0.5})
    pd.DataFrame(table).to_csv(root / "maestro-v3.0.0.csv", index=False)
    return rows


def test_maestro_gets_a_derived_id(tmp_path, capsys):
    root = tmp_path / "raw" / "maestro"
    rows = make_maestro(root)
    assert run(tmp_path, "maestro") == 0
    info = read_info_csv(root)
    assert info["id"].tolist() == [stem for *_, stem in rows]  # the MIDI path without its extension
    assert info["composer"].tolist() == [r[0] for r in rows] and info["split"].tolist() == ["train", "test", "validation"]
    assert info["year"].dtype.kind == "i"
    assert_files_decode(root, info)
    assert "3 rows" in capsys.readouterr().out
    # the same csv used as is: --id_column names the identifying column
    (root / "info.csv").write_bytes((root / "maestro-v3.0.0.csv").read_bytes())
    as_is = read_info_csv(root, id_column="midi_filename")
    assert as_is["id"].tolist() == [f"{stem}.midi" for *_, stem in rows]


def test_an_existing_different_info_csv_is_kept_unless_overwrite(tmp_path, capsys):
    root = tmp_path / "raw" / "maestro"
    make_maestro(root)
    (root / "info.csv").write_text("id,audio_filename,midi_filename\nmine,a.wav,a.mid\n")
    assert run(tmp_path, "maestro") == 2
    assert "--overwrite" in capsys.readouterr().err and "mine" in (root / "info.csv").read_text()
    assert run(tmp_path, "maestro", "--overwrite") == 0
    assert run(tmp_path, "maestro") == 0  # the same index again: nothing to protect


# -- Slakh -----------------------------------------------------------------------------------------
STEMS = {"S00": {"inst_class": "Piano", "program_num": 0, "is_drum": False},
         "S01": {"inst_class": "Drums", "program_num": 0, "is_drum": True},
         "S02": {"inst_class": "Bass", "program_num": 33, "is_drum": False}}


def make_slakh(root):
    import yaml

    layout = {"train/Track00001": 3, "train/Track00002": 2, "test/Track00003": 3, "omitted/Track00004": 1}
    for k, (folder, n_stems) in enumerate(layout.items()):
        track = root / folder
        stems = dict(list(STEMS.items())[:n_stems])
        media(root, None if folder.endswith("2") else f"{folder}/mix.flac".replace(".flac", ".wav"),
              f"{folder}/all_src.mid", k)
        for name in stems:
            media(root, f"{folder}/stems/{name}.wav", f"{folder}/MIDI/{name}.mid", k)
        meta = {"UUID": f"u{k}", "audio_dir": "stems", "midi_dir": "MIDI",
                "lmd_midi_dir": f"lmd_matched/A/B/C/TRABC{k}/{k:032x}.mid", "stems": stems}
        (track / "metadata.yaml").write_text(yaml.safe_dump(meta))


def test_slakh_mixes_with_their_all_src_midi(tmp_path):
    root = tmp_path / "raw" / "slakh"
    make_slakh(root)
    assert run(tmp_path, "slakh") == 0
    info = read_info_csv(root)
    assert info["id"].tolist() == ["Track00003", "Track00001", "Track00002"]  # test/ sorts before train/
    assert info["split"].tolist() == ["test", "train", "train"]
    assert info["audio_filename"].tolist() == ["test/Track00003/mix.wav", "train/Track00001/mix.wav", ABSENT]
    assert info["midi_filename"].tolist() == [f"{s}/{t}/all_src.mid" for s, t in
                                              (("test", "Track00003"), ("train", "Track00001"), ("train", "Track00002"))]
    assert info["inst_classes"].tolist() == ["Bass;Drums;Piano", "Bass;Drums;Piano", "Drums;Piano"]
    assert info["has_drums"].tolist() == [True, True, True] and info["n_stems"].tolist() == [3, 3, 2]
    assert info["lmd_midi"][1].startswith("lmd_matched/")
    assert_files_decode(root, info)
    assert run(tmp_path, "slakh", "--slakh_omitted", "--overwrite") == 0
    assert "Track00004" in set(read_info_csv(root)["id"])


def test_slakh_per_stem(tmp_path):
    root = tmp_path / "raw" / "slakh"
    make_slakh(root)
    assert run(tmp_path, "slakh", "--slakh_stems") == 0
    info = read_info_csv(root)
    assert len(info) == 3 + 2 + 3 and info["id"][0] == "Track00003/S00"
    drums = info[info["is_drum"]]
    assert set(drums["inst_class"]) == {"Drums"} and drums["id"].str.endswith("/S01").all()
    assert info.set_index("id").loc["Track00001/S02", "program"] == 33
    assert_files_decode(root, info)


# -- Lakh MIDI, matched -----------------------------------------------------------------------------
def test_lakh_matched_best_match_per_song_and_songs_without_preview(tmp_path):
    from ray_jobs.prepare_dataset.recipes.lakh_matched import msd_folder

    root = tmp_path / "raw" / "lakh_matched"
    scores = {"TRAAAGR128F425B14B": {"b" * 32: 0.6, "c" * 32: 0.9, "a" * 32: 0.9},
              "TRBBBXY128F4261234": {"d" * 32: 0.7},
              "TRCCCZZ128F4265678": {"e" * 32: 0.8}}  # its MIDI file is absent: left out
    for k, (msd, matches) in enumerate(scores.items()):
        for md5 in matches:
            if msd != "TRCCCZZ128F4265678":
                media(root, None, f"lmd_matched/{msd_folder(msd)}/{md5}.mid", k)
    media(root, "audio/TRAAAGR128F425B14B.mp3".replace(".mp3", ".wav"), None)
    (root / "match_scores.json").write_text(json.dumps(scores))
    assert msd_folder("TRRRUFD12903CD7092") == "R/R/U/TRRRUFD12903CD7092"  # as in LMD's own tutorial
    assert run(tmp_path, "lakh_matched") == 0
    info = read_info_csv(root)
    assert info["id"].tolist() == ["TRAAAGR128F425B14B", "TRBBBXY128F4261234"]
    assert info["midi_md5"].tolist() == ["a" * 32, "d" * 32]  # best score, ties by md5
    assert info["audio_filename"].tolist() == ["audio/TRAAAGR128F425B14B.wav", ABSENT]  # no preview: MIDI only
    assert info["n_matches"].tolist() == [3, 1]
    assert_files_decode(root, info)
    assert run(tmp_path, "lakh_matched", "--all_matches", "--overwrite") == 0
    every = read_info_csv(root)
    assert every["id"].tolist() == [f"TRAAAGR128F425B14B/{m * 32}" for m in "acb"] + [f"TRBBBXY128F4261234/{'d' * 32}"]
    assert every.groupby("msd_id")["split"].nunique().max() == 1  # one song, one split


@pytest.mark.parametrize("source, message", [("maestro", "maestro-v*.csv"), ("slakh", "Track*"),
                                             ("lakh_matched", "match_scores.json")])
def test_a_folder_without_the_layout_is_one_line(tmp_path, capsys, source, message):
    (tmp_path / "raw" / source).mkdir(parents=True)
    assert run(tmp_path, source) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
    assert run(tmp_path / "nowhere", source) == 2
    assert "unpack or link" in capsys.readouterr().err
