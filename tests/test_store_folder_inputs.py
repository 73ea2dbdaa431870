"""The downstream jobs' readers take the store folder (its Parquet parts) as --h5_path, like embeddings.h5."""

from __future__ import annotations

import numpy as np
import pytest

from embedders.store.parts import write_metadata
from embedders.store.reader import load
from tests.sweep_factory import tiny_store

A, S = "audio_embeddings", "symbolic_embeddings"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    h5 = tiny_store(root)
    info = load(h5, A).metadata  # every row is valid in the tiny store
    write_metadata(root, info, {"dataset": "tiny"})
    return root, h5


@pytest.mark.parametrize("embedding_type", ["average", "sequence"])
def test_classifier_task_is_the_same_from_folder_and_file(store, embedding_type):
    from training.classifier_data import load_task

    folder, h5 = store
    got = load_task(folder, A, "style", embedding_type=embedding_type, split_column=None, seed=3)
    want = load_task(h5, A, "style", embedding_type=embedding_type, split_column=None, seed=3)
    assert list(got.ids) == list(want.ids) and list(got.split) == list(want.split)
    assert got.class_names == want.class_names and np.array_equal(got.y, want.y)
    if embedding_type == "average":
        np.testing.assert_array_equal(got.X, want.X)
    else:
        assert all(np.array_equal(a, b) for a, b in zip(got.X, want.X))


def test_sweep_plans_the_same_tasks_from_folder_and_file(store, tmp_path):
    from ray_jobs.sweep import job as sweep
    from ray_jobs.sweep.plan import plan_tasks

    folder, h5 = store
    tasks = {}
    for name, source in (("folder", folder), ("h5", h5)):
        args = sweep.build_parser().parse_args(["--h5_path", str(source), "--labels", "style,tempo",
                                                 "--output_dir", str(tmp_path / name)])
        settings = sweep.settings_from_args(args)
        assert settings.experiment_name == f"tiny/{name}"  # the dataset name read from either form
        tasks[name] = [(t.medium, t.embedder, t.label, t.task) for t in plan_tasks(settings)]
    assert tasks["folder"] == tasks["h5"] and len(tasks["h5"]) == 4
