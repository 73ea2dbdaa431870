"""compare_embeddings' rows: which two media are paired, the retrieval split, the label metrics' folds.

* ``parse_media`` / ``load_media_pair``: ``--media A,B`` (each ``medium`` or ``medium:embedder``),
  rows valid in both media, paired by id. The default pair (audio, symbolic) goes through the
  store's ``load_pair``; any other pair (e.g. transcribed against symbolic) is paired here the
  same way, the first medium in the ``audio`` fields and outputs' ``x`` side, the second in ``y``.
* ``retrieval_split``: fit the retrieval maps on rows whose ``split`` is not ``test`` and score
  them on the ``test`` rows; with ``--group_column`` a split that puts a group on both sides is
  not used (a recording's siblings would be found by their group, not by their content) and whole
  groups are drawn instead, about half the rows to each side (seeded). Without a split column, or
  with fewer than ``MIN_SPLIT_ROWS`` rows on a side, a seeded 50/50 draw (of whole groups, with a
  group column).
* ``label_folds``: the label metrics' K-fold CV keeps groups apart; with fewer groups than folds
  it becomes leave-one-group-out (every recording scored once, as test of its own group's fold).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MIN_SPLIT_ROWS = 10
LABEL_FOLDS = 5


class RowsError(ValueError):
    """The flags name rows that cannot be compared (one line for the user)."""


def parse_media(text: str, audio_embedder: str | None, symbolic_embedder: str | None) -> list[tuple[str, str | None]]:
    """``"A[:emb],B[:emb]"`` -> [(A, emb), (B, emb)]; --audio_embedder / --symbolic_embedder fill in their medium."""
    items = [part.strip() for part in (text or "").split(",") if part.strip()]
    if len(items) != 2:
        raise RowsError(f"--media: expected two media to compare, e.g. audio_embeddings,symbolic_embeddings; got {text!r}")
    fallback = {"audio_embeddings": audio_embedder, "symbolic_embeddings": symbolic_embedder}
    media = []
    for item in items:
        medium, _, embedder = item.partition(":")
        media.append((medium.strip(), embedder.strip() or fallback.get(medium.strip())))
    if media[0][0] == media[1][0] and media[0][1] == media[1][1]:
        raise RowsError(f"--media: {text!r} names the same embeddings twice")
    return media


def load_media_pair(h5_path, media: list[tuple[str, str | None]], embedding_type: str, label: str | None):
    """The rows valid in both media, aligned by id (``embedders.store.reader.PairedEmbeddings``)."""
    from embedders.store.reader import load_pair

    return load_pair(h5_path, embedding_type=embedding_type, label=label, media=tuple(m for m, _ in media),
                     embedders=tuple(e for _, e in media))


def grouped_half(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole groups, in seeded order, to the test side until it holds about half the rows."""
    names = np.array(sorted(set(groups.tolist())), dtype=object)
    if names.size < 2:
        raise RowsError(f"--group_column: {names.size} group(s); the retrieval split needs at least 2 "
                        "(maps are fitted on some groups and scored on others)")
    order = names[np.random.default_rng(np.random.SeedSequence([seed, 11])).permutation(names.size)]
    sizes = pd.Series(groups).value_counts()
    test_groups, filled = [], 0
    for g in order[:-1]:                       # the last group always stays on the fitting side
        if filled >= groups.size / 2:
            break
        test_groups.append(g)
        filled += int(sizes[g])
    test = np.isin(groups, test_groups)
    return np.flatnonzero(~test), np.flatnonzero(test)


def retrieval_split(metadata: pd.DataFrame, seed: int, group_column: str | None = None
                    ) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(train_idx, test_idx, description); (None, None, ...) lets compare_spaces draw a seeded 50/50 split."""
    groups = None if group_column is None else metadata[group_column].astype(str).to_numpy(dtype=object)
    if "split" in metadata.columns:
        split = metadata["split"].astype(str).str.strip().str.lower().to_numpy()
        test = np.flatnonzero(split == "test")
        train = np.flatnonzero(split != "test")
        crossing = [] if groups is None else sorted(set(groups[test].tolist()) & set(groups[train].tolist()))
        if crossing:
            reason = (f"'split' puts {len(crossing)} {group_column} group(s) on both sides (e.g. {crossing[:3]}), "
                      "so it is not used")
        elif min(test.size, train.size) >= MIN_SPLIT_ROWS:
            kept = f"; no {group_column} group on both sides" if groups is not None else ""
            return train, test, (f"metadata 'split': fit on {train.size} train+validation rows, "
                                 f"evaluate on {test.size} test rows{kept}")
        else:
            reason = f"'split' has {test.size} test / {train.size} other rows (< {MIN_SPLIT_ROWS})"
    else:
        reason = "no 'split' column"
    if groups is None:
        return None, None, f"seeded random 50/50 (seed {seed}; {reason})"
    train, test = grouped_half(groups, seed)
    return train, test, (f"seeded 50/50 of whole {group_column} groups (seed {seed}; {reason}): fit on {train.size} "
                         f"rows of {len(set(groups[train].tolist()))} groups, evaluate on {test.size} rows of "
                         f"{len(set(groups[test].tolist()))} groups")


def label_folds(groups: np.ndarray | None, group_column: str | None) -> tuple[int, str]:
    """(n_splits for compare_labels, description): 5 folds, or one per group when groups are fewer."""
    if groups is None:
        return LABEL_FOLDS, f"stratified {LABEL_FOLDS}-fold"
    n_groups = len(set(groups.tolist()))
    if n_groups < 2:
        raise RowsError(f"--group_column {group_column}: {n_groups} group; cross-validation over groups needs at "
                        "least 2")
    if n_groups < LABEL_FOLDS:
        return n_groups, (f"leave-one-group-out over {n_groups} {group_column} groups (fewer than {LABEL_FOLDS} "
                          "folds): every recording scored once, as test of its own group's fold")
    return LABEL_FOLDS, f"{LABEL_FOLDS}-fold keeping {group_column} groups apart"
