"""Slakh2100: Lakh MIDI songs rendered with sample-based instruments; one folder per track.

Public layout (``slakh2100_flac_redux``, placed or linked as ``<data_root>/raw/<dataset>/``)::

    train/Track00001/mix.flac         the mixture (mix.wav in the WAV release)
    train/Track00001/all_src.mid      every stem's MIDI in one file (the paired score)
    train/Track00001/metadata.yaml    stems: S00: {inst_class, program_num, is_drum, midi_program_name, ...}
    train/Track00001/stems/S00.flac   train/Track00001/MIDI/S00.mid   ...
    validation/...  test/...  omitted/...

``index`` gives one row per track: ``id`` = the track folder name, ``split`` = its parent folder
(``omitted`` tracks are left out unless asked for), the mixture and ``all_src.mid``, and from
metadata.yaml the instrument classes, the number of stems, whether a drum stem plays, and the
Lakh MIDI file the song came from (``lmd_midi``). ``stems=True`` gives one row per stem instead
(``id`` = ``Track00001/S00``; stem audio and MIDI; its class, program and drum flag): the
instrument-level pairing. A missing file leaves its path empty (that medium is absent).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ray_jobs.prepare_dataset.recipes.maestro import LayoutError

SPLITS = ("train", "validation", "test")
AUDIO_SUFFIXES = (".flac", ".wav")


def _audio(folder: Path, stem: str, root: Path) -> str:
    for suffix in AUDIO_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return (folder / f"{stem}{suffix}").relative_to(root).as_posix()
    return ""


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_file() else ""


def index(root, stems: bool = False, include_omitted: bool = False) -> pd.DataFrame:
    """info.csv rows for the Slakh folder ``root`` (one per track, or per stem with ``stems``)."""
    import yaml

    root = Path(root)
    splits = (*SPLITS, "omitted") if include_omitted else SPLITS
    tracks = sorted(t for s in splits for t in (root / s).glob("Track*") if t.is_dir())
    if not tracks:
        raise LayoutError(f"{root}: no {'/'.join(splits)}/Track*/ folders (Slakh2100's layout)")
    rows = []
    for track in tracks:
        meta_path = track / "metadata.yaml"
        meta = yaml.safe_load(meta_path.read_text()) if meta_path.is_file() else {}
        stem_meta = meta.get("stems") or {}
        common = {"split": track.parent.name, "track": track.name, "lmd_midi": meta.get("lmd_midi_dir", "")}
        if stems:
            for name, info in sorted(stem_meta.items()):
                rows.append({"id": f"{track.name}/{name}",
                             "audio_filename": _audio(track / meta.get("audio_dir", "stems"), name, root),
                             "midi_filename": _relative(track / meta.get("midi_dir", "MIDI") / f"{name}.mid", root),
                             **common, "inst_class": info.get("inst_class", ""), "program": info.get("program_num", -1),
                             "is_drum": bool(info.get("is_drum", False))})
            continue
        rows.append({"id": track.name, "audio_filename": _audio(track, "mix", root),
                     "midi_filename": _relative(track / "all_src.mid", root), **common,
                     "inst_classes": ";".join(sorted({str(s.get("inst_class", "")) for s in stem_meta.values()})),
                     "n_stems": len(stem_meta), "has_drums": any(bool(s.get("is_drum")) for s in stem_meta.values())})
    return pd.DataFrame(rows)
