"""`model.device`: every stage places its models where the pipeline says, a CUDA setting on a
machine without CUDA is a one-line config error, cpu forces accelerate onto the CPU, and the
accelerator is freed when a stage ends."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from align.config import load_pipeline
from align.core.errors import AlignError
from align.pipeline import plan, run_stage
from align.train.placement import make_accelerator
from flows.cli import main
from tests.conftest import REPO

# torch.device("cpu", 0) runs like the CPU but differs from torch.device("cpu"): a model moved
# anywhere else (a stage that ignores the setting, a default left in place) shows up
MARKER = torch.device("cpu", 0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pipeline", "overrides", "stages"),
    [
        (
            "quickstart.yaml",
            ["annotate.reward={model: tiny-reward}"],  # a reward model in annotate and evaluate
            ["sample", "annotate", "evaluate", "judge"],  # judge: policy and local judge model
        ),
        ("bmc-quickstart.yaml", [], ["rewrite"]),  # reference model and local rewriter
    ],
    ids=["quickstart", "bmc-rewrite"],
)
def test_every_stage_places_its_models_where_model_device_says(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    pipeline: str,
    overrides: list[str],
    stages: list[str],
) -> None:
    asked: list[str] = []
    moved: list[torch.device] = []

    def resolve(setting: str) -> torch.device:
        asked.append(setting)
        return MARKER

    original = PreTrainedModel.to

    def spy(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, torch.device | str) and not isinstance(target, torch.dtype):
            moved.append(torch.device(target))
        return original(self, *args, **kwargs)

    monkeypatch.setattr("align.stages.common.resolve_device", resolve)
    monkeypatch.setattr(PreTrainedModel, "to", spy)
    cfg = load_pipeline(f"pipelines/{pipeline}", [*overrides, "model.device=cpu"], smoke=True)
    for p in plan(cfg):
        asked.clear()
        moved.clear()
        manifest, ran = run_stage(cfg, p.name)
        assert ran
        if p.name not in stages:
            continue
        assert asked == ["cpu"], p.name  # the stage read model.device once
        assert moved, f"{p.name} placed no model"
        assert set(moved) == {MARKER}, (p.name, moved)  # every model went where it said
        assert manifest["summary"]["device"] == "cpu:0", p.name


def test_stages_report_the_cpu_they_ran_on(project: Path) -> None:
    cfg = load_pipeline("pipelines/quickstart.yaml", ["model.device=cpu"], smoke=True)
    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, PreTrainedModel)}  # other tests'
    devices = {}
    for p in plan(cfg)[:3]:  # prepare-model, sample, annotate
        devices[p.name] = run_stage(cfg, p.name)[0]["summary"].get("device")
    assert devices == {"prepare-model": None, "sample": "cpu", "annotate": "cpu"}
    # nothing the stages loaded outlives them: a model kept alive would keep accelerator memory
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, PreTrainedModel)]
    assert not [o for o in alive if id(o) not in before]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("cuda", "model.device: 'cuda' but torch "),
        ("cuda:1", "model.device: 'cuda:1' but torch "),
        ("gpu", "model.device: 'gpu' is not one of auto, cpu, cuda, cuda:N"),
    ],
)
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_a_one_line_config_error(
    capsys: pytest.CaptureFixture[str], setting: str, expected: str
) -> None:
    pipeline = REPO / "pipelines/quickstart.yaml"
    assert main(["validate", str(pipeline), "--set", f"model.device={setting}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{pipeline}: {expected}" in err
    if setting.startswith("cuda"):
        assert "sees no CUDA device here; use 'auto' or 'cpu'" in err


def test_cpu_forces_accelerate_onto_the_cpu_where_cuda_is_present(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = load_pipeline(REPO / "pipelines/quickstart.yaml", ["model.device=cpu"], smoke=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    acc = make_accelerator(cfg)
    assert acc.device == torch.device("cpu")


def test_settings_no_stage_can_follow_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("align.core.device.cuda_problem", lambda setting: None)  # a GPU machine
    with pytest.raises(AlignError) as info:
        load_pipeline(REPO / "pipelines/nca-7b.yaml", ["model.device=cuda:1"])
    assert "model.device: 'cuda:1' pins one GPU but annotate.processes 8 runs annotate on 8" in (
        str(info.value)
    )
    with pytest.raises(AlignError) as info:
        load_pipeline(
            REPO / "pipelines/nca-7b.yaml", ["model.device=cuda:1", "annotate.processes=1"]
        )
    assert "model.device: 'cuda:1' pins one GPU but train.distributed launches 8" in str(info.value)
    monkeypatch.setattr("align.core.packages.installed", lambda name: True)  # vllm
    with pytest.raises(AlignError, match=r"model\.device: 'cpu' but sample\.backend is vllm"):
        load_pipeline(
            REPO / "pipelines/quickstart.yaml", ["model.device=cpu", "sample.backend=vllm"]
        )
