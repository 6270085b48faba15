"""`train.report_to`: the trainer's log rows reach TensorBoard and MLflow, read back from their
own files; a missing package is a one-line error before the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.config import load_pipeline
from align.core.errors import AlignError
from align.model.loading import resolve_model
from align.pipeline import plan
from align.train import trackers
from align.train.trainer import Trainer
from tests.test_trainer import _records

QS = "pipelines/quickstart.yaml"


def _train(project: Path, report_to: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_pipeline(
        QS,
        [f"train.report_to={report_to}", "train.max_steps=3", "train.batch_size=2"],
        smoke=True,
    )
    out = project / "train"
    Trainer(cfg, Path(resolve_model("tiny")), _records(cfg, 4), out, "h").train()
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return out, rows


def test_tensorboard_events_hold_every_logged_step(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, rows = _train(project, "[tensorboard]", monkeypatch)
    (run,) = (out / "tensorboard").iterdir()
    assert run.name == "quickstart-smoke"  # the pipeline's name
    events = EventAccumulator(str(run))
    events.Reload()
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    margin = [e.value for e in events.Scalars("rewards/margin")]
    assert margin == pytest.approx([r["rewards/margin"] for r in rows], rel=1e-6)


def test_mlflow_local_store_holds_metrics_and_params(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    out, rows = _train(project, "[mlflow]", monkeypatch)
    assert (out / "mlflow.db").is_file()
    client = mlflow.MlflowClient(tracking_uri=trackers.mlflow_uri(out))
    (experiment,) = [e for e in client.search_experiments() if e.name == "quickstart-smoke"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert run.data.params["train.loss.name"] == "nca"
    assert run.data.params["train.max_steps"] == "3"


def test_a_missing_tracker_package_is_named_with_its_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AlignError, match=r"'wandb' needs the 'wandb' package.*\.\[wandb\]"):
        trackers.check_installed(["wandb"])


def test_report_to_changes_no_stage_hash(project: Path) -> None:
    """Where the log rows also go is not an input of any stage: no re-run when it changes."""
    plain = {p.name: p.stage_hash for p in plan(load_pipeline(QS))}
    tracked = load_pipeline(QS, ["train.report_to=[tensorboard]"])
    assert tracked.train.report_to == ["tensorboard"]
    assert {p.name: p.stage_hash for p in plan(tracked)} == plain


def test_unknown_or_repeated_tracker_is_rejected(project: Path) -> None:
    with pytest.raises(AlignError, match="report_to"):
        load_pipeline(QS, ["train.report_to=[tensorbord]"])
    with pytest.raises(AlignError, match="listed twice"):
        load_pipeline(QS, ["train.report_to=[mlflow, mlflow]"])


def test_wandb_runs_offline_inside_the_train_folder(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, rows = _train(project, "[wandb]", monkeypatch)
    assert trackers.os.environ["WANDB_MODE"] == "offline"
    (run,) = (out / "wandb").glob("offline-run-*")
    (history,) = run.glob("*.wandb")  # the run's records, written without any network
    assert history.stat().st_size > 0
    assert len(rows) == 3
