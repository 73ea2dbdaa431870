import numpy as np
import pytest

from embedders.base import AudioDecodeError, EmptyInputError, MidiDecodeError, MissingFileError
from embedders.io import decode_audio, decode_midi, midi_duration_seconds
from tests.factory import scale_notes, sine_wave, write_midi, write_wav


def test_audio_is_mono_float32_at_target_rate(tmp_path):
    stereo = np.stack([sine_wave(440, 1.0), sine_wave(440, 1.0)], axis=1)
    path = write_wav(tmp_path / "a.wav", stereo, sr=48000)
    audio = decode_audio(path, 16000, "a")
    assert audio.dtype == np.float32 and audio.ndim == 1 and abs(len(audio) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 2  # pitch survives resampling


@pytest.mark.parametrize("make, error, text", [
    (lambda p: None, MissingFileError, "file not found"),
    (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt junk"), AudioDecodeError, "cannot decode audio"),
    (lambda p: p.write_bytes(b""), AudioDecodeError, "cannot decode audio"),
    (lambda p: write_wav(p, np.zeros(0, np.float32)), EmptyInputError, "zero-length"),
    (lambda p: write_wav(p, np.zeros(4800, np.float32)), EmptyInputError, "silent audio"),
])
def test_audio_errors_name_the_item(tmp_path, make, error, text):
    path = tmp_path / "x.wav"
    make(path)
    with pytest.raises(error, match=text) as info:
        decode_audio(path, 22050, "item-7")
    assert info.value.item_id == "item-7" and str(info.value).startswith("[item-7]")


def test_midi_loads_with_tempo(tmp_path):
    path = write_midi(tmp_path / "m.mid", scale_notes(n=8), bpm=60)
    score = decode_midi(path, "m")
    assert score.note_num() == 8 and midi_duration_seconds(score) == pytest.approx(8.0, abs=0.01)


@pytest.mark.parametrize("content, error, text", [
    (None, MissingFileError, "file not found"),
    (b"not a midi file at all", MidiDecodeError, "cannot parse MIDI"),
    (b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0", EmptyInputError, "no notes"),
])
def test_midi_errors_name_the_item(tmp_path, content, error, text):
    path = tmp_path / "x.mid"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=text) as info:
        decode_midi(path, "item-9")
    assert info.value.item_id == "item-9"
