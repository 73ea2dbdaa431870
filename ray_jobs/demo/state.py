"""What the demo's outputs were made from, so a rerun continues its own work and never mixes builds.

``<results_dir>/demo_state.json`` holds::

    {"prepare": "<sha of the prepare_dataset settings>",
     "dataset": {"dir": "<absolute dataset folder>", "info_csv_sha256": "..."},
     "steps": {"<embedding step>": "<info_csv_sha256 the step's store rows belong to>"}}

* The dataset: ``prepare_dataset`` records ``build_hash`` (its settings: performance, seed,
  SoundFont, ...) in ``.build/<id>.json`` per work. The stage is done when ``info.csv`` exists,
  every row's record carries the hash these settings give, and the prepare flags are the ones
  recorded; otherwise prepare_dataset runs (it rebuilds exactly the works built otherwise).
* The results: they belong to the dataset identity (folder + sha256 of ``info.csv``). When the
  identity differs from the recorded one, or demo outputs exist without a record (an older demo),
  the demo's outputs in ``results_dir`` are moved to ``results_dir/stale/<UTC time>/`` and rebuilt.
* The embedding store (under ``data_root``, possibly shared by several results folders): each
  embedding step records the identity *before* it runs; a step whose record differs is rerun with
  ``--overwrite`` (its rows, and the transcriptions, were made from other files), while a step
  killed mid-way (record equal) resumes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from embedders.store.atomic import write_json

STATE_FILE = "demo_state.json"
STALE_DIR = "stale"
# what the demo writes into results_dir (this version's and earlier versions' names): moved aside together
RESULT_OUTPUTS = ("pretrain/demo_model", "compare", "sweep", "mlflow.db", "mlartifacts", "index.html",
                  "demo_timings.json")


def settings_sha(settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dataset_built(dataset_dir: Path, build_hash: str) -> bool:
    """True when ``info.csv`` exists and every work it lists was built with ``build_hash``."""
    import pandas as pd

    info_csv = dataset_dir / "info.csv"
    if not info_csv.exists():
        return False
    for work_id in pd.read_csv(info_csv, usecols=["id"], dtype=str, keep_default_na=False)["id"]:
        try:
            record = json.loads((dataset_dir / ".build" / f"{work_id}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        if record.get("build_hash") != build_hash:
            return False
    return True


class DemoState:
    """The record above, read once and written (atomically) after every change."""

    def __init__(self, results: Path):
        self.path = Path(results) / STATE_FILE
        try:
            self.data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {}
        self.data.setdefault("steps", {})

    def save(self) -> None:
        write_json(self.path, self.data)

    def set(self, key: str, value) -> None:
        self.data[key] = value
        self.save()

    def claim_results(self, results: Path, identity: dict) -> Path | None:
        """Make ``results`` belong to ``identity``; returns the folder stale outputs went to (None: none)."""
        present = [name for name in RESULT_OUTPUTS if (results / name).exists()]
        previous = self.data.get("dataset")
        moved = None
        if present and previous != identity:
            moved = results / STALE_DIR / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            for name in present:
                (moved / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(results / name), str(moved / name))
        if previous != identity:
            self.data["steps"] = {}  # every embedding step must prove its rows belong to this dataset
        self.set("dataset", identity)
        return moved

    def step_current(self, key: str) -> bool:
        return self.data["steps"].get(key) == self.data.get("dataset", {}).get("info_csv_sha256")

    def start_step(self, key: str) -> bool:
        """Record that ``key``'s outputs now belong to this dataset; True when they did not (overwrite them)."""
        stale = not self.step_current(key)
        self.data["steps"][key] = self.data["dataset"]["info_csv_sha256"]
        self.save()
        return stale
