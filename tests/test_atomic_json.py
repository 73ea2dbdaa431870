"""embedders.store.atomic.write_json: the one writer of result JSON (strict, atomic), checked against json itself."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from embedders.store.atomic import json_bytes, json_ready, write_json


def strict_load(text: str):
    return json.loads(text, parse_constant=lambda token: pytest.fail(f"non-JSON token {token} in {text}"))


def test_result_json_is_strict_json(tmp_path):
    """One seed has no interval: its NaN bounds must land as null, not as the non-JSON token NaN."""
    write_json(tmp_path / "r.json", {"ci_lo": float("nan"), "ci_hi": np.float64("inf"), "mean": np.float32(0.5),
                                     "scores": np.array([0.25, 0.75]), "path": Path("results/x")})
    record = strict_load((tmp_path / "r.json").read_text())
    assert record == {"ci_lo": None, "ci_hi": None, "mean": 0.5, "scores": [0.25, 0.75], "path": "results/x"}


def test_json_ready_converts_numpy_nested_and_unknown_values():
    value = {1: (np.int64(3), np.bool_(True), [np.float64(-math.inf), None]), "a": np.array([[1, 2]], np.int32),
             "b": {"c": np.str_("x")}, "d": object}
    ready = json_ready(value)
    assert ready == {"1": [3, True, [None, None]], "a": [[1, 2]], "b": {"c": "x"}, "d": str(object)}
    assert type(ready["1"][0]) is int and type(ready["1"][1]) is bool and type(ready["a"][0][0]) is int
    # the same text json.dumps writes for the plain equivalent, so readers see no difference
    plain = {"x": 0.1, "y": [1, 2], "z": "é"}
    assert json_bytes({"x": np.float64(0.1), "y": np.array([1, 2]), "z": "é"}) == json.dumps(plain, indent=2).encode()


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "deep" / "out.json"
    write_json(target, {"v": 1})

    def half_then_fail(self, data):   # a disk filling up mid-write
        with open(self, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError("no space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError, match="no space"):
        write_json(target, {"v": 2, "more": list(range(100))})
    monkeypatch.undo()
    assert strict_load(target.read_text()) == {"v": 1}   # the old file, whole
    assert os.listdir(target.parent) == ["out.json"]     # no temporary file left behind
