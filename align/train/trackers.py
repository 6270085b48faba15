"""Experiment trackers (`train.report_to`): the trainer's per-step log row, also sent to
TensorBoard, MLflow or Weights & Biases through accelerate's trackers.

Everything stays offline and inside the train stage's folder unless the user's environment says
otherwise:
  tensorboard  events under <train>/tensorboard/<pipeline>/ (`tensorboard --logdir runs/`)
  mlflow       a local SQLite store, <train>/mlflow.db (MLflow's recommended local backend; its
               plain-folder store is frozen), unless MLFLOW_TRACKING_URI is set:
               `mlflow ui --backend-store-uri sqlite:///runs/<pipeline>/train/mlflow.db`
  wandb        offline mode (WANDB_MODE=offline) under <train>/wandb, unless WANDB_MODE is set;
               `wandb sync <train>/wandb/offline-run-*` uploads it later
Only the main process logs; a missing package is a one-line error before the model loads.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from align.config import PipelineConfig
from align.core.errors import AlignError

# tracker -> (module that must be importable, the extra that installs it)
PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}


def check_installed(report_to: list[str]) -> None:
    """AlignError naming the first tracker whose package is missing and how to install it."""
    for name in report_to:
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise AlignError(
                f"train.report_to: {name!r} needs the {module!r} package; install it with "
                f"`pip install -e '.[{extra}]'` or remove {name!r} from train.report_to"
            )


def accelerator_kwargs(cfg: PipelineConfig, out: Path) -> dict[str, Any]:
    """Keyword arguments for `Accelerator(...)`: the trackers and their logging folder
    (empty when `train.report_to` is empty)."""
    if not cfg.train.report_to:
        return {}
    check_installed(cfg.train.report_to)
    return {"log_with": list(cfg.train.report_to), "project_dir": str(out / "tensorboard")}


def flat_config(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of `a.b.c` keys with scalar values (lists and None as
    text): what TensorBoard's hparams and MLflow's params accept."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat_config(item, f"{prefix}{key}."))
        return out
    if isinstance(value, bool | int | float | str):
        return {prefix.rstrip("."): value}
    return {prefix.rstrip("."): str(value)}


def mlflow_uri(out: Path) -> str:
    """The default MLflow store of a train folder: one SQLite file inside it."""
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


def start(acc: Any, cfg: PipelineConfig, out: Path) -> None:
    """Open the configured trackers on `acc` (an `Accelerator` built with
    `accelerator_kwargs`) and record the pipeline's config as the run's parameters."""
    if not cfg.train.report_to:
        return
    init: dict[str, dict] = {}
    if "mlflow" in cfg.train.report_to and acc.is_main_process:
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri(mlflow_uri(out))
        init["mlflow"] = {"run_name": cfg.name}
    if "wandb" in cfg.train.report_to:
        os.environ.setdefault("WANDB_MODE", "offline")
        (out / "wandb").mkdir(parents=True, exist_ok=True)
        init["wandb"] = {"dir": str(out), "name": cfg.name}
    acc.init_trackers(cfg.name, config=flat_config(cfg.model_dump(mode="json")), init_kwargs=init)


def log(acc: Any, cfg: PipelineConfig, row: dict, step: int) -> None:
    """Send the finite numbers of one log row (booleans as 0/1) at optimizer step `step`."""
    if not cfg.train.report_to:
        return
    values = {
        k: float(v)
        for k, v in row.items()
        if k != "step" and isinstance(v, int | float) and math.isfinite(v)
    }
    acc.log(values, step=step)


def end(acc: Any, cfg: PipelineConfig) -> None:
    """Flush and close the trackers (the events are complete on disk after this)."""
    if cfg.train.report_to:
        acc.end_training()
