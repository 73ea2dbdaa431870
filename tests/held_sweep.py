"""``python -m tests.held_sweep MARKER TASK_KEY -- <sweep flags>``: the sweep job's command line, held mid-search.

Runs ``ray_jobs.sweep`` as ``python -m ray_jobs.sweep`` would (``runpy``, in this process), except
that the driver stops for good once task ``TASK_KEY``'s first trial has logged its first epoch to
MLflow: it writes MARKER and sleeps, so a test can SIGKILL the job's whole session at a known point
(that task's parent run and an unfinished trial run exist, its search.json does not; the earlier
tasks' searches have ended). The hold is installed here, in the test's subprocess, so
the job's own code carries no test hook.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path


def hold(marker: Path) -> None:
    marker.write_text("held\n")
    while True:        # until the test kills this process
        time.sleep(60)


def install_hold(marker: Path, task_key: str) -> None:
    from ray_jobs.sweep.tracking import TrialLogger

    real = TrialLogger.on_trial_result

    def on_trial_result(self, iteration, trials, trial, result, **info):
        real(self, iteration, trials, trial, result, **info)    # the epoch is in MLflow now
        if self.key == task_key:
            hold(marker)

    TrialLogger.on_trial_result = on_trial_result


def main(argv: list[str]) -> None:
    marker, task_key, separator, *flags = argv
    if separator != "--":
        raise SystemExit(f"usage: python -m tests.held_sweep MARKER TASK_KEY -- <sweep flags>; got {argv}")
    install_hold(Path(marker), task_key)
    sys.argv = ["python -m ray_jobs.sweep", *flags]
    runpy.run_module("ray_jobs.sweep", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
