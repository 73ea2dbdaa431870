import os

import pandas as pd
import pytest

from embedders.dataset import (
    ABSENT,
    InfoCsvError,
    absent_reason,
    has_medium,
    read_info_csv,
    resolve_item_path,
    row_media,
)


def write_info(root, rows, columns=None):
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(root / "info.csv", index=False)
    return root


def row(i, audio=None, midi=None, **extra):
    return {"id": i, "audio_filename": audio or f"audio/{i}.wav", "midi_filename": midi or f"midi/{i}.mid", **extra}


def test_valid_file_keeps_column_types(tmp_path):
    root = write_info(tmp_path / "ds", [row("a", bpm=120, style="jazz", duration=1.5),
                                        row("b", bpm=90, style="rock", duration=2.0)])
    info = read_info_csv(root)
    assert list(info["id"]) == ["a", "b"]
    assert pd.api.types.is_integer_dtype(info["bpm"]) and pd.api.types.is_float_dtype(info["duration"])
    assert info["style"].tolist() == ["jazz", "rock"]


def test_numeric_looking_ids_stay_strings(tmp_path):
    root = write_info(tmp_path / "ds", [row("007"), row("8")])
    assert read_info_csv(root)["id"].tolist() == ["007", "8"]


def test_missing_file(tmp_path):
    with pytest.raises(InfoCsvError, match="info.csv not found"):
        read_info_csv(tmp_path)


def test_missing_required_column(tmp_path):
    root = write_info(tmp_path / "ds", [{"id": "a", "audio_filename": "a.wav"}])
    with pytest.raises(InfoCsvError, match=r"lacks required column\(s\) \['midi_filename'\]"):
        read_info_csv(root)


def test_duplicate_ids_name_their_lines(tmp_path):
    root = write_info(tmp_path / "ds", [row("a"), row("b"), row("a")])
    with pytest.raises(InfoCsvError, match=r"duplicate id\(s\): 'a' on lines 2, 4"):
        read_info_csv(root)


def test_empty_id_is_refused(tmp_path):
    root = write_info(tmp_path / "ds", [row("a"), {"id": "", "audio_filename": "x.wav", "midi_filename": "x.mid"}])
    with pytest.raises(InfoCsvError, match=r"empty id on line\(s\) 3"):
        read_info_csv(root)


def test_one_medium_missing_is_valid_for_the_other(tmp_path):
    """GMD has performances with MIDI and no audio: an empty cell (or blanks) means 'no such medium'."""
    root = tmp_path / "ds"
    root.mkdir()
    (root / "info.csv").write_text("id,audio_filename,midi_filename,bpm\n"
                                   "a,audio/a.wav,midi/a.mid,120\n"
                                   "b,,midi/b.mid,90\n"
                                   "c,audio/c.wav,  ,100\n"
                                   "d,\"\",midi/d.mid,80\n")
    info = read_info_csv(root)
    assert info["audio_filename"].tolist() == ["audio/a.wav", ABSENT, "audio/c.wav", ABSENT]
    assert info["midi_filename"].tolist() == ["midi/a.mid", "midi/b.mid", ABSENT, "midi/d.mid"]
    assert has_medium(info, "audio_embeddings").tolist() == [True, False, True, False]
    assert has_medium(info, "symbolic_embeddings").tolist() == has_medium(info, "midi_filename").tolist() \
        == [True, True, False, True]
    assert has_medium(info, "transcribed_embeddings").tolist() == [True, False, True, False]
    assert [row_media(r) for _, r in info.iterrows()] == [
        ("audio_filename", "midi_filename"), ("midi_filename",), ("audio_filename",), ("midi_filename",)]
    assert info["bpm"].tolist() == [120, 90, 100, 80]
    assert absent_reason("audio_embeddings") == "empty audio_filename in info.csv: this recording has no audio"
    assert "has no MIDI" in absent_reason("symbolic_embeddings")
    with pytest.raises(ValueError, match="unknown medium"):
        has_medium(info, "video_embeddings")


def test_a_row_with_neither_medium_refuses_the_file(tmp_path):
    root = write_info(tmp_path / "ds", [row("a"), {"id": "b", "audio_filename": "", "midi_filename": " "},
                                        {"id": "c", "audio_filename": "", "midi_filename": "midi/c.mid"}])
    with pytest.raises(InfoCsvError, match=r"neither audio_filename nor midi_filename on line\(s\) 3: "):
        read_info_csv(root)


def test_id_column_names_the_identifying_column(tmp_path):
    """MAESTRO's csv has no id column: --id_column midi_filename uses the MIDI path as the id."""
    columns = ["canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename", "duration"]
    rows = [["Bach", "Prelude", "train", 2004, "2004/a.midi", "2004/a.wav", 61.5],
            ["Chopin", "Ballade", "test", 2006, "2006/b.midi", "", 300.0],
            ["Liszt", "Etude", "validation", 2008, "2008/007.midi", "2008/007.wav", 12.0]]
    root = write_info(tmp_path / "maestro", rows, columns)
    with pytest.raises(InfoCsvError, match="lacks required column.*'id'.*--id_column"):
        read_info_csv(root)
    info = read_info_csv(root, id_column="midi_filename")
    assert info["id"].tolist() == ["2004/a.midi", "2006/b.midi", "2008/007.midi"]
    assert info.columns[0] == "id" and info["canonical_composer"].tolist() == ["Bach", "Chopin", "Liszt"]
    assert info["audio_filename"].tolist() == ["2004/a.wav", ABSENT, "2008/007.wav"]
    numbered = write_info(tmp_path / "numbered", [["007", "a.wav", "a.mid"], ["7", "b.wav", "b.mid"]],
                          ["take", "audio_filename", "midi_filename"])
    assert read_info_csv(numbered, id_column="take")["id"].tolist() == ["007", "7"]  # strings, not numbers
    with pytest.raises(InfoCsvError, match=r"lacks required column\(s\) \['recording'\]"):
        read_info_csv(root, id_column="recording")
    with pytest.raises(InfoCsvError, match="has an 'id' column and id_column='midi_filename'"):
        read_info_csv(write_info(tmp_path / "both", [row("a")]), id_column="midi_filename")
    dup = write_info(tmp_path / "dup", [["a", "x.wav", "x.mid"], ["a", "y.wav", "y.mid"], ["", "z.wav", "z.mid"]],
                     ["take", "audio_filename", "midi_filename"])
    message = str(pytest.raises(InfoCsvError, read_info_csv, dup, id_column="take").value)
    assert "duplicate id(s) (column 'take'): 'a' on lines 2, 3" in message
    assert "empty id (column 'take') on line(s) 4" in message


@pytest.mark.parametrize("bad, reason", [
    ("/etc/passwd", "is an absolute path"),
    ("C:\\music\\a.wav", "is an absolute path"),
    ("../outside.wav", "contains '..'"),
    ("audio/../../outside.wav", "contains '..'"),
])
def test_paths_that_escape_are_refused_with_their_rows(tmp_path, bad, reason):
    root = write_info(tmp_path / "ds", [row("ok"), row("evil", audio=bad)])
    with pytest.raises(InfoCsvError) as err:
        read_info_csv(root)
    message = str(err.value)
    assert "line 3 (id 'evil')" in message and reason in message and "nothing was processed" in message


def test_symlink_escaping_the_folder_is_refused(tmp_path):
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"x")
    root = tmp_path / "ds"
    (root / "audio").mkdir(parents=True)
    os.symlink(outside, root / "audio" / "link.wav")
    write_info(root, [row("a", audio="audio/link.wav")])
    with pytest.raises(InfoCsvError, match="resolves outside the dataset folder"):
        read_info_csv(root)
    with pytest.raises(InfoCsvError, match="must stay inside"):
        resolve_item_path(root, "audio/link.wav")


def test_header_only_file(tmp_path):
    root = write_info(tmp_path / "ds", [], columns=["id", "audio_filename", "midi_filename"])
    with pytest.raises(InfoCsvError, match="no rows"):
        read_info_csv(root)


def test_all_problems_reported_together(tmp_path):
    root = write_info(tmp_path / "ds", [row("a", audio="/abs.wav"), row("a", midi="../x.mid")])
    message = str(pytest.raises(InfoCsvError, read_info_csv, root).value)
    assert "duplicate" in message and "absolute" in message and "'..'" in message
