import os

import pandas as pd
import pytest

from embedders.dataset import InfoCsvError, read_info_csv, resolve_item_path


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


def test_empty_id_and_path(tmp_path):
    root = write_info(tmp_path / "ds", [row("a"), {"id": "", "audio_filename": "x.wav", "midi_filename": ""},
                                        {"id": "c", "audio_filename": "", "midi_filename": ""}])
    with pytest.raises(InfoCsvError) as err:
        read_info_csv(root)
    # an empty path alone is valid (that medium is absent); no id, or no path at all, is not
    assert "empty id on line(s) 3" in str(err.value) and "neither audio_filename nor midi_filename on line(s) 4" in str(err.value)
    assert "line(s) 3, 4" not in str(err.value)


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
