"""Safe loading. YAML through a SafeLoader, weights only as safetensors, pickles only with
`weights_only=True`, no code from model folders, and output folders inside the project.

The corpus (tests/bad_inputs/cases.yaml) covers the same ground through the CLI: a
`!!python/object/apply` tag, a model folder with `auto_map` custom code, pickled `.bin`
weights, and `runs_dir` / pipeline names that try to leave the project.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from align.config import load_pipeline, parse_yaml
from align.config.reading import _Loader
from align.core.errors import AlignError
from align.model.loading import load_model, load_tokenizer, resolve_model
from align.pipeline import STAGES, stage_folder
from align.train.trainer import Trainer
from tests.bad_inputs.harness import CORPUS, REPO

SOURCES = sorted(p for folder in ("align", "flows", "tasks") for p in (REPO / folder).rglob("*.py"))


def _calls(pattern: str) -> list[tuple[Path, str]]:
    """(file, line) for every source line matching `pattern`."""
    rx = re.compile(pattern)
    return [
        (path, line.strip())
        for path in SOURCES
        for line in path.read_text().splitlines()
        if rx.search(line)
    ]


def test_source_audit() -> None:
    """Every YAML parse goes through a SafeLoader; every torch.load is weights_only; nothing
    unpickles, evals or enables remote code."""
    assert issubclass(_Loader, yaml.SafeLoader)
    for path, line in _calls(r"yaml\.load\("):
        assert "Loader=_Loader" in line, (path, line)
    assert _calls(r"yaml\.(unsafe_load|full_load)|Loader=yaml\.(Loader|FullLoader|Unsafe)") == []
    for path, line in _calls(r"torch\.load\("):
        assert "weights_only=True" in line, (path, line)
    assert _calls(r"pickle\.loads?\(|(?<![.\w])(eval|exec)\(|trust_remote_code=True") == []


def test_yaml_tags_never_construct_objects(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(yaml.YAMLError, match="could not determine a constructor"):
        parse_yaml(f'x: !!python/object/apply:os.system ["touch {marker}"]')
    assert not marker.exists()


def test_model_loads_pass_safe_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_model and load_tokenizer ask transformers for safetensors and no remote code."""
    import transformers

    seen: list[dict] = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained

        def spy(*args, _original=original, **kwargs):
            seen.append(kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    path = resolve_model("tiny")
    load_model(path, device="cpu")
    load_tokenizer(path)
    assert [k.get("trust_remote_code") for k in seen] == [False, False]
    assert seen[0].get("use_safetensors") is True


def test_pickled_optimizer_state_is_refused_not_run(project: Path) -> None:
    """A checkpoint whose optimizer.pt carries a pickle payload: resume refuses it in one line
    and the payload never runs (torch.load with weights_only=True)."""
    marker = project / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cfg = load_pipeline("pipelines/quickstart.yaml", smoke=True)
    records = [
        {
            "id": f"r{i}",
            "prompt": [{"role": "user", "content": f"What is {i} plus 1?"}],
            "responses": [str(i + 1), "no"],
            "rewards": [1.0, 0.0],
            "ref_logps": [-3.0, -4.0],
        }
        for i in range(4)
    ]
    out = project / "train"
    trainer = Trainer(cfg, Path(resolve_model("tiny")), records, out, "h")
    ckpt = out / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text('{"step": 1, "stage_hash": "h"}')
    model = trainer.acc.unwrap_model(trainer.model)
    save_file({n: p.detach() for n, p in model.named_parameters()}, ckpt / "trainable.safetensors")
    torch.save({"optimizer": Payload()}, ckpt / "optimizer.pt")
    with pytest.raises(AlignError, match=r"checkpoint does not fit this model .*Unpickling"):
        trainer.try_resume()
    assert not marker.exists()


@pytest.mark.parametrize(
    ("runs_dir", "name"),
    [("runs", "quickstart"), ("out/runs", "a.b_c-d"), ("./runs", "x"), ("runs/", "0x")],
)
def test_stage_folders_stay_inside_the_project(project: Path, runs_dir: str, name: str) -> None:
    cfg = load_pipeline(
        "pipelines/quickstart.yaml", [f"runs_dir={runs_dir}", f"name={name}"], smoke=True
    )
    for stage in STAGES:
        folder = (project / stage_folder(cfg, stage)).resolve()
        assert folder.is_relative_to(project.resolve()), folder


@pytest.mark.parametrize(
    "override",
    [
        "runs_dir=..",
        "runs_dir=runs/../../x",
        "runs_dir=/abs",
        "runs_dir=~/runs",
        "runs_dir=''",
        "name=..",
        "name=a/b",
        "name=.hidden",
        "judge.cache_dir=/var/cache/judge",
    ],
)
def test_output_paths_that_leave_the_project_are_refused(project: Path, override: str) -> None:
    with pytest.raises(AlignError, match="must"):
        load_pipeline("pipelines/quickstart.yaml", [override])


def test_corpus_covers_the_safety_cases() -> None:
    cases = yaml.safe_load((CORPUS / "cases.yaml").read_text())
    names = {c["name"] for c in cases}
    assert {
        "python-tag-is-not-executed",
        "model-with-custom-code",
        "pickled-weights",
        "runs-dir-escapes-project",
        "pipeline-name-is-a-path",
        "api-key-pasted-into-yaml",
    } <= names
