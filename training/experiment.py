"""Train a probe on one task (plain PyTorch), keep the best epoch by validation, score once on test.

``ClassificationExperiment(data, TrainConfig(...)).fit()`` then ``.evaluate("test")`` and
``.save(save_dir)`` (``best_model.pth`` + ``training_history.json`` + confusion matrix JSON/PNG).
``training.seed_runs.run_seeds`` repeats this over seeds (and folds) beside its controls.

Standardisation (z-score per feature; for sequences over all training frames) and, for
regression, the target's scale are fitted on the training split only and saved with the model.
The best epoch is the one with the highest validation accuracy (ties: lower validation loss);
for regression the lowest validation loss. Training stops after ``patience`` epochs without one.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from analysis.report.plots import confusion_png
from embedders.store.atomic import atomic_path, atomic_write_bytes, write_json
from training.classifier_data import TaskData
from training.classifier_metrics import classification_metrics, majority_baseline, mean_baseline, regression_metrics
from training.classifiers import build_model, resolve_spec, takes_lengths

MODEL_FILE = "best_model.pth"
HISTORY_FILE = "training_history.json"


class ModelFileError(ValueError):
    """A saved model does not fit the task it is asked to evaluate."""


@dataclasses.dataclass
class TrainConfig:
    model: str = "auto"            # probe name, "auto" (linear / attention), or "module:Class"
    hidden_dim: int = 256
    dropout: float = 0.1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    num_epochs: int = 50
    patience: int = 10
    seed: int = 0
    model_kwargs: dict = dataclasses.field(default_factory=dict)


def _standardiser(data: TaskData) -> tuple[np.ndarray, np.ndarray]:
    train = data.rows(data.index("train"))
    frames = train if isinstance(train, np.ndarray) else np.concatenate(train, axis=0)
    mean = frames.mean(axis=0).astype(np.float32)
    std = frames.std(axis=0).astype(np.float32)
    return mean, np.where(std > 1e-8, std, 1.0).astype(np.float32)


class ClassificationExperiment:
    def __init__(self, data: TaskData, config: TrainConfig, device: str | None = None):
        self.data, self.config = data, config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.spec = resolve_spec(config.model, data.embedding_type)
        self.model_kwargs = {"hidden_dim": config.hidden_dim, "dropout": config.dropout, **config.model_kwargs}
        self.mean, self.std = _standardiser(data)
        train_y = data.y[data.index("train")].astype(np.float64)
        self.y_mean = float(train_y.mean()) if data.task == "regression" else 0.0
        self.y_std = float(train_y.std() or 1.0) if data.task == "regression" else 1.0
        torch.manual_seed(config.seed)
        self.model = build_model(self.spec, data.input_dim, data.num_outputs, **self.model_kwargs).to(self.device)
        self.uses_lengths = data.embedding_type == "sequence" and takes_lengths(self.model)
        self.history: list[dict] = []
        self.best_epoch: int | None = None

    # ---------------------------------------------------------------- batches
    def _batches(self, index: np.ndarray, shuffle: bool, generator: torch.Generator | None = None):
        order = index[torch.randperm(len(index), generator=generator).numpy()] if shuffle else index
        for start in range(0, len(order), self.config.batch_size):
            rows = order[start:start + self.config.batch_size]
            yield self._inputs(rows), rows

    def _inputs(self, rows: np.ndarray):
        mean, std = torch.from_numpy(self.mean), torch.from_numpy(self.std)
        if isinstance(self.data.X, np.ndarray):
            return ((torch.from_numpy(self.data.X[rows]) - mean) / std).to(self.device), None
        seqs = [self.data.X[i] for i in rows]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        x = torch.zeros(len(seqs), max(1, int(lengths.max())), self.data.input_dim)   # (B, T, D), zero padding
        for k, s in enumerate(seqs):
            x[k, : len(s)] = (torch.from_numpy(s) - mean) / std
        return x.to(self.device), lengths.to(self.device)

    def _forward(self, inputs) -> torch.Tensor:
        x, lengths = inputs
        return self.model(x, lengths) if self.uses_lengths else self.model(x)

    def _targets(self, rows: np.ndarray) -> torch.Tensor:
        if self.data.task == "classification":
            return torch.from_numpy(self.data.y[rows]).to(self.device)
        return torch.from_numpy(((self.data.y[rows] - self.y_mean) / self.y_std).astype(np.float32)).to(self.device)

    def _loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.data.task == "classification":
            return nn.functional.cross_entropy(out, target)
        return nn.functional.mse_loss(out.squeeze(-1), target)

    # ---------------------------------------------------------------- training
    def fit(self, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        # a private RNG stream (dropout) seeded here: the result depends on the seed only, not on what ran before
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed + 1)
            return self._fit(on_epoch)

    def _fit(self, on_epoch: Callable[[int, dict], None] | None) -> dict:
        cfg = self.config
        optimiser = torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        generator = torch.Generator().manual_seed(cfg.seed)
        train_index = self.data.index("train")
        best_key, best_state, waited = None, None, 0
        for epoch in range(1, cfg.num_epochs + 1):   # epochs count from 1 everywhere users see them
            self.model.train()
            total, count = 0.0, 0
            for inputs, rows in self._batches(train_index, shuffle=True, generator=generator):
                loss = self._loss(self._forward(inputs), self._targets(rows))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total, count = total + float(loss.detach()) * len(rows), count + len(rows)
            val = self._evaluate_split("validation")
            metrics = {"epoch": epoch, "train_loss": total / max(count, 1), "val_loss": val["loss"]}
            if self.data.task == "classification":
                metrics.update(val_accuracy=val["accuracy"], val_macro_f1=val["macro_f1"],
                               val_balanced_accuracy=val["balanced_accuracy"])
                key = (val["accuracy"], -val["loss"])
            else:
                metrics.update(val_mae=val["mae"], val_rmse=val["rmse"], val_r2=val["r2"])
                key = (-val["loss"],)
            self.history.append(metrics)
            if best_key is None or key > best_key:
                best_key, best_state, waited, self.best_epoch = key, copy.deepcopy(self.model.state_dict()), 0, epoch
            else:
                waited += 1
            if on_epoch is not None:
                on_epoch(epoch, dict(metrics))
            if waited >= cfg.patience:
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return {"history": self.history, "best_epoch": self.best_epoch, "epochs_run": len(self.history)}

    @torch.no_grad()
    def predict(self, index: np.ndarray) -> tuple[np.ndarray, float]:
        """Predictions (class indices or target values) and the mean loss on those rows."""
        self.model.eval()
        outputs, total = [], 0.0
        for inputs, rows in self._batches(index, shuffle=False):
            out = self._forward(inputs)
            total += float(self._loss(out, self._targets(rows))) * len(rows)
            outputs.append(out.float().cpu())
        out = torch.cat(outputs) if outputs else torch.zeros(0, self.data.num_outputs)
        if self.data.task == "classification":
            return out.argmax(dim=1).numpy(), total / max(len(index), 1)
        return out.squeeze(-1).numpy() * self.y_std + self.y_mean, total / max(len(index), 1)

    def _evaluate_split(self, split: str) -> dict:
        index = self.data.index(split)
        pred, loss = self.predict(index)
        if self.data.task == "classification":
            return {"loss": loss, **classification_metrics(self.data.y[index], pred, self.data.class_names)}
        return {"loss": loss, **regression_metrics(self.data.y[index], pred)}

    def evaluate(self, split: str = "test") -> dict:
        """Metrics of the kept (best) model on one split, beside that split's baseline."""
        out = self._evaluate_split(split)
        y_train, y_split = self.data.y[self.data.index("train")], self.data.y[self.data.index(split)]
        out["baseline"] = (majority_baseline(y_train, y_split, self.data.class_names)
                           if self.data.task == "classification" else mean_baseline(y_train, y_split))
        return out

    # ---------------------------------------------------------------- files
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the model: tensors and plain Python only (weights_only loads)."""
        return {
            "format": "audio-vs-symbolic classifier v1", "state_dict": self.model.state_dict(),
            "spec": self.spec, "model_kwargs": self.model_kwargs, "input_dim": self.data.input_dim,
            "num_outputs": self.data.num_outputs, "task": self.data.task, "class_names": self.data.class_names,
            "embedding_type": self.data.embedding_type, "label": self.data.provenance.get("label"),
            "medium": self.data.provenance.get("medium"), "embedder": self.data.provenance.get("embedder"),
            "mean": torch.from_numpy(self.mean), "std": torch.from_numpy(self.std),
            "y_mean": self.y_mean, "y_std": self.y_std, "best_epoch": self.best_epoch,
            # the test ids this model was scored on (under cross-validation: its own fold's)
            "test_ids_sha256": self.data.split_sha256(),
            "cv_fold": self.data.fold_index if self.data.folds is not None else None,
            "config": dataclasses.asdict(self.config),
        }

    def save(self, save_dir, extra: dict | None = None, test_result: dict | None = None) -> dict:
        """best_model.pth, training_history.json and (classification) confusion_matrix.json/.png.

        ``test_result`` replaces this model's own test metrics in the files (cross-validation: the
        scores pooled over every fold, where each row is test once)."""
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(save_dir / MODEL_FILE) as tmp:
            torch.save(self.state(), tmp)
        results = {split: self.evaluate(split) for split in ("validation", "test")}
        if test_result is not None:
            results["test"] = test_result
        record = {"config": dataclasses.asdict(self.config), "model": self.spec, "model_kwargs": self.model_kwargs,
                  "task": self.data.task, "best_epoch": self.best_epoch, "epochs_run": len(self.history),
                  "history": self.history, "validation": results["validation"], "test": results["test"],
                  "provenance": self.data.provenance, **(extra or {})}
        write_json(save_dir / HISTORY_FILE, record)
        if self.data.task == "classification":
            matrix = {"class_names": self.data.class_names, "matrix": results["test"]["confusion_matrix"],
                      "rows": "true class", "columns": "predicted class", "split": "test"}
            write_json(save_dir / "confusion_matrix.json", matrix)
            atomic_write_bytes(save_dir / "confusion_matrix.png", confusion_png(
                matrix["matrix"], self.data.class_names, f"{self.data.provenance.get('label')} · "
                f"{self.data.provenance.get('medium')} · test accuracy {results['test']['accuracy']:.3f}"))
        return record

    @classmethod
    def load(cls, model_path, data: TaskData, device: str | None = None) -> ClassificationExperiment:
        if not Path(model_path).is_file():
            raise ModelFileError(f"--model_path {model_path}: no such file")
        try:
            state = torch.load(model_path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
            raise ModelFileError(f"--model_path {model_path}: not a readable checkpoint ({exc})") from exc
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ModelFileError(f"--model_path {model_path} is not a classifier saved by train_classifier "
                                 "(no 'state_dict')")
        wrong = {flag: (state.get(key), value) for key, (flag, value) in {
            "medium": ("--medium", data.provenance.get("medium")), "label": ("--label", data.provenance.get("label")),
            "embedder": ("--embedder", data.provenance.get("embedder")), "task": ("--task", data.task),
            "embedding_type": ("--embedding_type", data.embedding_type), "input_dim": ("input dimension", data.input_dim),
            "class_names": ("classes", data.class_names)}.items() if state.get(key) != value}
        if wrong:
            raise ModelFileError(f"--model_path {model_path} does not fit this task: " + "; ".join(
                f"{flag}: model has {a!r}, data has {b!r}" for flag, (a, b) in wrong.items()))
        if data.folds is not None:   # a cross-validated task: the model is evaluated on the fold it was trained in
            fold = state.get("cv_fold")
            if fold is None or not 0 <= int(fold) < data.n_folds:
                raise ModelFileError(f"--model_path {model_path} was not trained on one of this task's "
                                     f"{data.n_folds} cross-validation folds (cv_fold {fold!r})")
            data = data.fold(int(fold))
        digest = data.split_sha256()
        if state.get("test_ids_sha256") and state["test_ids_sha256"] != digest:
            print(f"warning: {model_path} was scored on a different test split than this one; pass the --seed, "
                  "--split_column and --group_column it was trained with to reproduce its test metrics")
        config = TrainConfig(**state["config"])
        exp = cls.__new__(cls)
        exp.data, exp.config = data, config
        exp.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        exp.spec, exp.model_kwargs = state["spec"], state["model_kwargs"]
        exp.mean, exp.std = state["mean"].numpy(), state["std"].numpy()
        exp.y_mean, exp.y_std = state["y_mean"], state["y_std"]
        exp.model = build_model(exp.spec, data.input_dim, data.num_outputs, **exp.model_kwargs).to(exp.device)
        exp.model.load_state_dict(state["state_dict"])
        exp.uses_lengths = data.embedding_type == "sequence" and takes_lengths(exp.model)
        exp.history, exp.best_epoch = [], state.get("best_epoch")
        return exp


