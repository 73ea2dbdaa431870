"""The whole chain on the bundled default dataset (what `make demo` runs).

    python -m ray_jobs.demo [--data_root data] [--results_dir results] [--dataset music21] [--limit N]
        [--performance light] [--max_seconds S] [--n_permutations N] ...

Stages, in order (each is skipped when its output already exists, so a rerun continues where the
last one stopped; ``state.py`` says how outputs made from another build of the dataset are found
and redone, never mixed):

1. ``prepare_dataset``: the paired music21 dataset, MIDI = the score, audio = a rendered
   *performance* of it (``--performance light``: tempo curve, dynamics, timing, drawn timbres);
2. ``pretrain``: the MIDI transformer, briefly (a small model, a few epochs: a demo, not a study);
3. ``generate_embeddings``: audio ``melstats`` (weight-free) and ``musicnn`` (real weights from
   its wheel); symbolic ``pianoroll`` and ``midi_transformer``; and the transcribed medium:
   ``pianoroll`` on each recording's ``basic_pitch`` transcription (real weights from its wheel);
4. ``compare_embeddings``: ``comparisons()``: each audio embedder against pianoroll (the research
   question), and pianoroll on the score against pianoroll on the transcription (what is lost
   between audio and symbols when the model is held fixed), without a label and per label;
5. ``sweep``: classifier sweeps for composer and metre (time_signature), audio against symbolic;
6. ``results page``: ``<results_dir>/index.html`` linking every output and the MLflow experiments.

Every stage that tracks runs writes to one MLflow store, ``sqlite:///<results_dir>/mlflow.db``.
Stage wall times are printed at the end and written to ``<results_dir>/demo_timings.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import NamedTuple

from embedders.dataset import dataset_dir, embeddings_dir, info_hash
from embedders.store.atomic import atomic_write_bytes, write_json
from ray_jobs.console import add_verbose_flag
from ray_jobs.demo.state import DemoState, dataset_built, settings_sha

LABELS = ("composer", "time_signature")  # composer and metre: the two the page reports
AUDIO = ("melstats", "musicnn")
SYMBOLIC = ("pianoroll", "midi_transformer")
TRANSCRIBER = "basic_pitch"
TRANSCRIBED = "pianoroll"  # the symbolic embedder run on the transcriptions: only the medium differs
A, S, T = "audio_embeddings", "symbolic_embeddings", "transcribed_embeddings"


class Comparison(NamedTuple):
    name: str   # folder under <results_dir>/compare/
    x: str      # MEDIUM:EMBEDDER, compare_embeddings' --media first (the "audio" side of its outputs)
    y: str
    labels: tuple[str | None, ...]


def comparisons(labels: tuple[str, ...] = LABELS) -> tuple[Comparison, ...]:
    """Each audio embedder against pianoroll, without a label and per label; the score's pianoroll
    against the transcription's, without a label and for the first label."""
    return (
        Comparison("melstats_vs_pianoroll", f"{A}:melstats", f"{S}:pianoroll", (None, *labels)),
        Comparison("musicnn_vs_pianoroll", f"{A}:musicnn", f"{S}:pianoroll", (None, *labels)),
        Comparison("pianoroll_vs_transcribed_pianoroll", f"{S}:pianoroll", f"{T}:{TRANSCRIBED}", (None, *labels[:1])),
    )


COMPARISONS = comparisons()


class EmbedStep(NamedTuple):
    key: str
    needs: frozenset   # {(medium, embedder)} the step stores
    argv: tuple[str, ...]


EMBED_STEPS = (
    EmbedStep("weight_free_and_transcribed", frozenset({(A, "melstats"), (S, "pianoroll"), (T, TRANSCRIBED)}),
              ("--media", f"{A},{S},{T}", "--audio_embedder", "melstats", "--symbolic_embedder", "pianoroll",
               "--transcriber", TRANSCRIBER)),
    EmbedStep("musicnn", frozenset({(A, "musicnn")}), ("--media", A, "--audio_embedder", "musicnn")),
    EmbedStep("midi_transformer", frozenset({(S, "midi_transformer")}),
              ("--media", S, "--symbolic_embedder", "midi_transformer")),  # + --symbolic_checkpoint
)
# A brief pretraining run: small enough for minutes on two CPU cores, large enough to beat the
# unigram baseline. The full default config is `python -m ray_jobs.pretrain`. On the bundled
# 325 works (68k training tokens an epoch), 8 epochs at lr 2e-3 reach test perplexity 189 against
# the unigram model's 338 in 2.5 min of training; 3 epochs at the default 3e-4 reached only 423.
PRETRAIN_OVERRIDES = (
    "train.embed_dim=128", "train.nhead=4", "train.num_layers=2", "train.max_seq_len=1024",
    "train.batch_size=8", "train.warmup_steps=20", "train.learning_rate=0.002",
    "dataset.vocab_size=1000", "dataset.limit=null",
    "train.model_name=demo_model",
)


# what the real-weight steps import (weights inside the musicnn and basic-pitch wheels; Makefile: EXTRAS)
REAL_WEIGHTS = {"musicnn": ("musicnn", "librosa"), "basic_pitch": ("basic_pitch", "onnxruntime", "mir_eval")}


def missing_packages() -> list[str]:
    """``name (packages)`` for every real-weight model whose packages are not importable."""
    import importlib.util

    out = []
    for model, packages in REAL_WEIGHTS.items():
        absent = [p for p in packages if importlib.util.find_spec(p) is None]
        if absent:
            out.append(f"{model} ({', '.join(absent)})")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.demo", description=__doc__.split("\n")[0])
    p.add_argument("--data_root", default="data", help="root of raw/ and embeddings/ (default: data)")
    p.add_argument("--results_dir", default="results", help="pretraining, comparisons, sweeps, MLflow store, index.html")
    p.add_argument("--dataset", default="music21")
    p.add_argument("--limit", type=int, default=None, help="build only N works (quick runs, tests)")
    p.add_argument("--max_seconds", type=float, default=30.0, help="cut every piece at S seconds")
    p.add_argument("--performance", choices=("none", "light", "strong"), default="light",
                   help="prepare_dataset --performance: the audio renders a drawn performance of the score (none: the "
                        "paired MIDI itself, so audio and MIDI agree by construction)")
    p.add_argument("--num_cpus", type=int, default=None, help="CPUs for the local Ray instance")
    p.add_argument("--pretrain_epochs", type=int, default=8)
    p.add_argument("--sweep_samples", type=int, default=8, help="Tune trials per (medium, embedder, label)")
    p.add_argument("--sweep_epochs", type=int, default=40, help="most epochs per sweep trial")
    p.add_argument("--labels", default=",".join(LABELS),
                   help="metadata columns the comparisons (within-label nulls, kNN) and the sweep use")
    p.add_argument("--sweep_embedders", default=",".join((*AUDIO, *SYMBOLIC)),
                   help="embedders the sweep sets against each other (each audio one against each symbolic one); "
                        "fewer: a shorter sweep")
    p.add_argument("--seeds", type=int, default=3, help="seeds for the final retraining of each best config")
    p.add_argument("--n_permutations", type=int, default=1000,
                   help="compare_embeddings null draws (Holm can reject only from the family's "
                        "min_permutations_for_holm on: 579 for the 29 space metrics)")
    add_verbose_flag(p)
    return p


STAGES = ("prepare_dataset", "pretrain", "generate_embeddings", "compare_embeddings", "sweep", "results page")


class Stages:
    """Runs stages in order, skipping finished ones, and keeps their wall times and what they did."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.runs: dict[str, list[int]] = {}  # stage -> [steps run, steps skipped]

    def header(self, name: str) -> None:
        if name not in self.runs:
            self.runs[name] = [0, 0]
            print(f"\n== [{STAGES.index(name) + 1}/{len(STAGES)}] {name}", flush=True)

    def run(self, name: str, done: bool, fn, *args) -> None:
        self.header(name)
        if done:
            print("   output present, skipped", flush=True)
            self.timings.setdefault(name, 0.0)
            self.runs[name][1] += 1
            return
        started = time.perf_counter()
        status = fn(*args)
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - started, 1)
        self.runs[name][0] += 1
        if status not in (0, None):
            raise SystemExit(f"demo: stage {name} failed with exit status {status}")

    def table(self) -> str:
        lines = [f"{'stage':<22}{'runs':>6}{'skipped':>9}{'seconds':>10}"]
        for name, (ran, skipped) in self.runs.items():
            lines.append(f"{name:<22}{ran:>6}{skipped:>9}{self.timings.get(name, 0.0):>10.1f}")
        lines.append(f"{'total':<22}{'':>6}{'':>9}{sum(self.timings.values()):>10.1f}")
        return "\n".join(lines)


def pretrain(data_root: str, dataset: str, results: Path, epochs: int, tracking_uri: str) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from ray_jobs.pretrain import job

    overrides = [*PRETRAIN_OVERRIDES, f"dataset.data_root={data_root}", f"dataset.name={dataset}",
                 f"output_dir={results / 'pretrain'}", f"train.epochs={epochs}",
                 f"mlflow.viz_interval={epochs}", f"mlflow.tracking_uri={tracking_uri}"]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="ray_jobs.pretrain.configs", version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    job.validate(cfg)
    print("python -m ray_jobs.pretrain " + " ".join(overrides), flush=True)
    job.run(cfg)


def call(module, argv: list[str]) -> int:
    print(f"python -m {module.__name__} {' '.join(argv)}", flush=True)
    return module.main(argv)


def stored(h5: Path) -> set[tuple[str, str]]:
    """{(medium, embedder)} in the consolidated store file."""
    if not h5.exists():
        return set()
    from embedders.store.reader import list_embedders

    return {(medium, name) for medium, names in list_embedders(h5).items() for name in names}


def prepare_argv(args, common: list[str]) -> list[str]:
    argv = ["--source", "music21", *common, "--performance", args.performance, "--max_seconds", str(args.max_seconds)]
    return argv + (["--limit", str(args.limit)] if args.limit else [])


def prepare_check(args, argv: list[str], root: Path, state: DemoState) -> tuple[bool, str]:
    """(the dataset folder holds exactly what these prepare flags build, the settings' sha to record)."""
    from embedders.store import filesystem as fs
    from ray_jobs.prepare_dataset import job as prepare_dataset

    _, parsed = prepare_dataset.parse_args(argv)
    build_hash = prepare_dataset.build_hash(parsed, fs.read_bytes(parsed.soundfont))
    wanted = settings_sha({"argv": [a for a in argv if a != args.data_root], "build_hash": build_hash})
    if state.data.get("prepare") == wanted and dataset_built(root, build_hash):
        return True, wanted
    if (root / "info.csv").exists():
        print(f"   {root} holds another build or was not made by this demo's settings (build hash {build_hash}): "
              "prepare_dataset rebuilds the works made otherwise; later stages redo what came from other files",
              flush=True)
    return False, wanted


def run_prepare(module, argv: list[str], state: DemoState, wanted: str) -> int:
    status = call(module, argv)
    if status == 0:
        state.set("prepare", wanted)
    return status


def embed(generate_embeddings, state: DemoState, step: EmbedStep, argv: list[str], store: Path) -> int:
    stale = state.start_step(step.key)
    made = [store / "parquet" / medium / name for medium, name in step.needs]
    if any(medium == T for medium, _ in step.needs):  # the transcriptions' index (reused by id and bpm)
        made += [store / "parquet" / "transcriptions", store / "transcriptions"]
    if stale and any(path.exists() for path in made):
        argv = [*argv, "--overwrite"]  # rows (and transcriptions) in the store were made from other files
    return call(generate_embeddings, argv)


def compared(out: Path, n_permutations: int) -> bool:
    """A comparison is done when its metrics.json exists with this many permutations."""
    import json

    try:
        return json.loads((out / "metrics.json").read_text())["inputs"]["n_permutations"] == n_permutations
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False


def swept(sweep_dir: Path, embedders: str, labels: tuple[str, ...] = ()) -> bool:
    """The sweep is done when its table holds every requested embedder and label (it lists every finished task)."""
    import pandas as pd

    try:
        table = pd.read_csv(sweep_dir / "summary.csv", dtype=str, keep_default_na=False)
    except FileNotFoundError:
        return False
    present = set(table.get("audio_embedder", [])) | set(table.get("symbolic_embedder", []))
    return {e for e in embedders.split(",") if e} <= present and set(labels) <= set(table.get("label", []))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = missing_packages()
    if missing:  # before any work: the chain would stop at its embedding stage
        raise SystemExit(f"demo: the real-weight models need packages that are not installed: {'; '.join(missing)}. "
                         "`make install` installs them (the musicnn and basic-pitch extras; docs/embedders.md)")
    from analysis.report import demo_index
    from ray_jobs.compare_embeddings import job as compare_embeddings
    from ray_jobs.generate_embeddings import job as generate_embeddings
    from ray_jobs.prepare_dataset import job as prepare_dataset
    from ray_jobs.ray_session import ensure_ray
    from ray_jobs.sweep import job as sweep

    # One Ray instance for the whole chain (every stage finds it initialised); with the dashboard,
    # whose state API Ray Train's controller polls during pretraining.
    ray_started = time.perf_counter()
    ensure_ray(args.num_cpus, dashboard=True, verbose=args.verbose)
    ray_start_seconds = round(time.perf_counter() - ray_started, 1)
    results = Path(args.results_dir).absolute()
    results.mkdir(parents=True, exist_ok=True)
    state = DemoState(results)
    tracking_uri = f"sqlite:///{results / 'mlflow.db'}"
    common = ["--dataset", args.dataset, "--data_root", args.data_root]
    stages = Stages()

    root = Path(dataset_dir(args.data_root, args.dataset))
    info_csv = root / "info.csv"
    stages.header("prepare_dataset")
    argv_prepare = prepare_argv(args, common)
    done, wanted = prepare_check(args, argv_prepare, root, state)
    stages.run("prepare_dataset", done, run_prepare, prepare_dataset, argv_prepare, state, wanted)
    moved = state.claim_results(results, {"dir": str(root.absolute()), "info_csv_sha256": info_hash(root)})
    if moved is not None:
        print(f"   outputs of another build of the dataset moved to {moved}", flush=True)

    model = results / "pretrain" / "demo_model" / "model.pt"
    stages.run("pretrain", model.exists(), pretrain, args.data_root, args.dataset, results, args.pretrain_epochs,
               tracking_uri)

    h5 = Path(embeddings_dir(args.data_root, args.dataset)) / "embeddings.h5"
    for step in EMBED_STEPS:
        step_argv = [*common, *step.argv]
        if step.key == "midi_transformer":
            step_argv += ["--symbolic_checkpoint", str(model)]
        stages.run("generate_embeddings", state.step_current(step.key) and step.needs <= stored(h5), embed,
                   generate_embeddings, state, step, step_argv, h5.parent)

    compare_dirs = {}
    labels = tuple(label for label in args.labels.split(",") if label)
    for comparison in comparisons(labels):
        for label in comparison.labels:
            out = results / "compare" / comparison.name / (label or "no_label")
            compare_dirs[(comparison.name, label)] = out
            flags = ["--h5_path", str(h5), "--output_dir", str(out), "--media", f"{comparison.x},{comparison.y}",
                     "--n_permutations", str(args.n_permutations), "--n_boot", str(args.n_permutations)]
            stages.run("compare_embeddings", compared(out, args.n_permutations), call, compare_embeddings,
                       [*flags, *(["--label", label] if label else [])])

    sweep_dir = results / "sweep"
    stages.run("sweep", swept(sweep_dir, args.sweep_embedders, labels), call, sweep,
               ["--h5_path", str(h5), "--labels", ",".join(labels), "--output_dir", str(sweep_dir),
                "--media", f"{A},{S}", "--embedders", args.sweep_embedders,
                "--num_samples", str(args.sweep_samples), "--max_epochs", str(args.sweep_epochs),
                "--seeds", str(args.seeds), "--mlflow_tracking_uri", tracking_uri])

    stages.header("results page")
    timings = stages.timings  # this run's: 0.0 marks a stage skipped because its output was present
    write_json(results / "demo_timings.json", timings)
    page = results / "index.html"
    atomic_write_bytes(page, demo_index.render(page, info_csv=info_csv, h5=h5, model=model, compare_dirs=compare_dirs,
                                               sweep_dir=sweep_dir, tracking_uri=tracking_uri, timings=timings).encode())
    stages.runs["results page"][0] += 1
    print("\n" + stages.table())
    print(f"Ray started once for the chain in {ray_start_seconds} s")
    print(f"results page: {page}")
    print(f"MLflow: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1")
    return 0
