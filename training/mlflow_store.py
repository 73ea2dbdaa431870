"""Where a job's MLflow artifacts go when its tracking store is a sqlite file.

MLflow gives an experiment created without ``artifact_location`` the artifact root ``./mlruns``
relative to the *current folder* of whichever process logs first, so a job started from the
repository (or a Ray worker's working folder on a cluster) would scatter model files there. Every
job that creates an experiment in a sqlite store passes ``artifact_location`` from here: a folder
beside the database. A tracking server chooses its own artifact root.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///"):])


def artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """``<database folder>/mlartifacts/<sha1(experiment name)[:12]>`` as a file URI for a sqlite
    store; None (the server's default) otherwise."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return None
    slug = hashlib.sha1(experiment_name.encode()).hexdigest()[:12]
    return (db.absolute().parent / "mlartifacts" / slug).as_uri()
