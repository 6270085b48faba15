"""align.config: every schema error is one line that names the file, the YAML path and the fix;
`--set` overrides and the `--smoke` profile; the shipped pipelines validate.

Each test writes its own small pipeline YAML into tmp_path (see `BASE`); only the last group reads
the files in pipelines/.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from align.config import PipelineConfig, load_pipeline, parse_override, validate_dict
from align.config.losses import LOSS_MODELS, loss_parameters
from align.core.errors import AlignError

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"

# A complete pipeline with every stage; tests edit a copy of it.
BASE: dict[str, Any] = {
    "name": "mini",
    "model": {"policy": "org/some-model", "dtype": "bfloat16"},
    "data": {"train": {"path": "train.jsonl"}, "eval": {"path": "eval.jsonl"}},
    "sample": {"k": 4, "max_new_tokens": 64, "batch_prompts": 8},
    "annotate": {"reward": {"function": "align.rewards.arithmetic:exact_answer"}},
    "train": {
        "loss": {"name": "nca", "beta": 0.1, "alpha": 0.25},
        "precision": "bf16",
        "max_length": 512,
        "max_prompt_length": 256,
    },
    "evaluate": {"max_new_tokens": 64},
}

Edit = Callable[[dict[str, Any]], None]
MakePipeline = Callable[..., Path]


@pytest.fixture
def make_pipeline(tmp_path: Path) -> MakePipeline:
    """Write BASE (after `edit`) as YAML into tmp_path and return its path."""

    def make(edit: Edit | None = None, name: str = "pipe.yaml") -> Path:
        doc = copy.deepcopy(BASE)
        if edit is not None:
            edit(doc)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return make


def error_of(path: Path, overrides: list[str] | None = None, smoke: bool = False) -> str:
    """The message of the AlignError that loading `path` raises; it must be a single line."""
    with pytest.raises(AlignError) as info:
        load_pipeline(path, overrides, smoke)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# schema errors


def test_base_pipeline_is_valid(make_pipeline: MakePipeline) -> None:
    cfg = load_pipeline(make_pipeline())
    assert cfg.name == "mini"
    assert cfg.train.loss.params() == {"beta": 0.1, "alpha": 0.25, "tie_break_first": False}
    assert cfg.data.eval is not None and cfg.data.eval.path == "eval.jsonl"
    assert cfg.eval_reward.function == "align.rewards.arithmetic:exact_answer"


def test_unknown_key_suggests_the_close_one(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["sample"].update(temprature=0.7))
    message = error_of(path)
    assert message.startswith(
        f"{path}: sample.temprature: unknown key (did you mean 'sample.temperature'?)"
    )
    valid = message.split("valid keys here: ")[1].split(", ")
    assert {"k", "temperature", "top_p", "max_new_tokens"} <= set(valid)


def test_unknown_key_in_an_optional_nested_section(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["data"]["eval"].update(pth="x.jsonl"))
    assert error_of(path).startswith(
        f"{path}: data.eval.pth: unknown key (did you mean 'data.eval.path'?)"
    )


def test_unknown_top_level_key_without_a_close_match(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d.update(zzz=1))
    message = error_of(path)
    assert message.startswith(f"{path}: zzz: unknown key; valid keys here: name, ")
    assert "did you mean" not in message


def test_unknown_loss_lists_valid_names_and_suggests(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["train"]["loss"].update(name="ncaa"))
    message = error_of(path)
    assert message.startswith(
        f"{path}: train.loss.name: unknown loss 'ncaa' (did you mean 'nca'?); valid: "
    )
    listed = message.split("valid: ")[1].split(", ")
    assert listed == sorted(LOSS_MODELS)
    assert {"nca", "infonca", "dpo", "ipo"} <= set(listed)


def test_unknown_loss_parameter_names_the_valid_ones(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["train"]["loss"].update(betta=0.2))
    assert error_of(path) == (
        f"{path}: train.loss.betta: unknown key (did you mean 'train.loss.beta'?); "
        "valid keys here: name, beta, alpha, tie_break_first"
    )


def test_loss_parameter_of_another_loss_is_rejected(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["train"].update(loss={"name": "dpo", "alpha": 1.0}))
    assert error_of(path) == f"{path}: train.loss.alpha: unknown key; valid keys here: name, beta"


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (
            {"name": "ipo_md", "beta": 2},
            "train.loss.beta: must be in [0, 1] (the reference's weight in the sampling mixture), "
            "got 2.0",
        ),
        (
            {"name": "upo", "preference": "kto"},
            "train.loss.preference: 'kto' is not one of "
            "'dpo', 'ipo', 'slic', 'nca_pair', 'nca' or 'infonca'",
        ),
        ({"name": "upo", "expectile": 1.0}, "train.loss.expectile: Input should be less than 1"),
        (
            {"name": "dpo_bmc", "delta": 0.5},
            "train.loss.delta: Input should be greater than or equal to 1",
        ),
        (
            {"name": "dpo_bmc", "ref_weights": "both"},
            "train.loss.ref_weights: 'both' is not one of 'reference' or 'policy'",
        ),
        (
            {"name": "upo", "lamda": 1.0},
            "train.loss.lamda: unknown key (did you mean 'train.loss.lambda'?); valid keys here: "
            "name, preference, beta, alpha, tau, gamma, lambda, value_coef, expectile, "
            "aux_warmup_steps, max_weight, value_lr",
        ),
    ],
)
def test_loss_parameter_errors_name_the_key(
    make_pipeline: MakePipeline, loss: dict, message: str
) -> None:
    path = make_pipeline(lambda d: d["train"].update(loss=loss))
    assert error_of(path) == f"{path}: {message}"


def test_loss_given_as_a_name_only(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["train"].update(loss="nca"))
    assert error_of(path).startswith(f"{path}: train.loss: Input should be a valid dictionary")


def test_upo_lambda_is_read_and_written_under_its_yaml_key(make_pipeline: MakePipeline) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["train"]["loss"] = {"name": "upo", "lambda": 2.5}
        d["train"]["aux_rewards"] = [{"fn": "brevity"}]

    cfg = load_pipeline(make_pipeline(edit))
    assert cfg.train.loss.lambda_ == 2.5
    assert cfg.train.loss.params()["lambda"] == 2.5
    assert cfg.train.model_dump(mode="json")["loss"]["lambda"] == 2.5


def test_loss_parameters_list_keys_defaults_and_reasons() -> None:
    rows = loss_parameters("dpo")
    assert rows == [("beta", 0.1, "TRL DPOConfig default")]
    keys = [key for key, _, _ in loss_parameters("upo")]
    assert "lambda" in keys and "name" not in keys
    assert all(reason for name in LOSS_MODELS for _, _, reason in loss_parameters(name))


def test_string_for_learning_rate(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["train"].update(learning_rate="fast"))
    message = error_of(path)
    assert message.startswith(f"{path}: train.learning_rate: ")
    assert "valid number" in message


def test_bool_for_beta(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["train"]["loss"].update(beta=True))
    assert error_of(path) == f"{path}: train.loss.beta: Input should be a valid number; got True"


def test_number_for_a_bool_loss_parameter(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["train"]["loss"].update(tie_break_first=1))
    assert error_of(path) == (
        f"{path}: train.loss.tie_break_first: Input should be a valid boolean; got 1"
    )


@pytest.mark.parametrize(
    ("section", "key", "value", "valid"),
    [
        ("train", "precision", "fp16", "'fp32', 'bf16' or 'bf16_weights'"),
        ("train", "lr_scheduler", "cosin", "'cosine', 'linear' or 'constant'"),
        ("model", "dtype", "fp16", "'float32' or 'bfloat16'"),
        ("sample", "dtype", "half", "'float32' or 'bfloat16'"),
    ],
)
def test_literal_fields_list_the_valid_values(
    make_pipeline: MakePipeline, section: str, key: str, value: str, valid: str
) -> None:
    path = make_pipeline(lambda d: d[section].update({key: value}))
    message = error_of(path)
    assert message.startswith(f"{path}: {section}.{key}: {value!r} is not one of {valid}")
    if value == "cosin":  # a near miss gets a did-you-mean
        assert message.endswith(f"{valid} (did you mean 'cosine'?)")


def test_data_format_lists_the_formats(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["data"]["train"].update(format="kwsie"))
    assert error_of(path) == (
        f"{path}: data.train.format: 'kwsie' is not one of "
        "'prompts', 'kwise', 'ultrafeedback' or 'pairs' (did you mean 'kwise'?)"
    )


def test_several_problems_are_all_reported_on_one_line(make_pipeline: MakePipeline) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["train"]["precision"] = "fp16"
        d["sample"]["temprature"] = 0.7

    path = make_pipeline(edit)
    message = error_of(path)
    parts = message.split("; ")
    problems = [p for p in parts if p.startswith(f"{path}: ")]
    assert len(problems) == 2
    assert any(p.startswith(f"{path}: sample.temprature: unknown key") for p in problems)
    valid = "'fp32', 'bf16' or 'bf16_weights'"
    assert (
        f"{path}: train.precision: 'fp16' is not one of {valid} (did you mean 'bf16'?)" in problems
    )


def test_malformed_yaml_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nmodel:\n  policy: tiny\n   dtype: float32\n")
    message = error_of(path)
    assert message.startswith(f"{path}: line 4, column ")
    assert "malformed YAML" in message
    assert "mapping values are not allowed here" in message


def test_malformed_yaml_with_a_tab(tmp_path: Path) -> None:
    path = tmp_path / "tab.yaml"
    path.write_text("name: x\ndata:\n\ttrain: {}\n")
    assert error_of(path).startswith(f"{path}: line 3, column 1: malformed YAML")


def test_missing_pipeline_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert error_of(path).startswith(f"{path}: no such pipeline file")


def test_missing_train_section(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d.pop("train"))
    assert error_of(path) == f"{path}: train: Field required"


def test_missing_loss_name(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["train"]["loss"].pop("name"))
    assert error_of(path) == f"{path}: train.loss.name: Field required"


@pytest.mark.parametrize(
    "train",
    [{"path": "a.jsonl", "hf_dataset": "org/data"}, {"split": "train"}],
    ids=["both", "neither"],
)
def test_data_needs_exactly_one_source(make_pipeline: MakePipeline, train: dict) -> None:
    path = make_pipeline(lambda d: d["data"].update(train=train))
    assert error_of(path) == (
        f"{path}: data.train: set exactly one of 'path' (local file) or 'hf_dataset'"
    )


def test_unknown_field_mapping_name(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["data"]["train"].update(fields={"promt": "question"}))
    message = error_of(path)
    assert message.startswith(f"{path}: data.train: fields: unknown name(s) ['promt']; valid: ")
    assert "prompt" in message.split("valid: ")[1].split(", ")


@pytest.mark.parametrize("loss", ["nca", "dpo"])
def test_k_of_one_is_too_few(make_pipeline: MakePipeline, loss: str) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["sample"]["k"] = 1
        d["train"]["loss"] = {"name": loss}

    path = make_pipeline(edit)
    assert error_of(path).endswith(f"sample.k is 1 but loss {loss!r} needs K >= 2")


def test_k_of_two_is_enough_for_nca(make_pipeline: MakePipeline) -> None:
    cfg = load_pipeline(make_pipeline(lambda d: d["sample"].update(k=2)))
    assert cfg.sample is not None and cfg.sample.k == 2


def test_prompts_format_needs_a_sample_stage(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d.pop("sample"))
    assert error_of(path).endswith(
        "data.train.format 'prompts' needs a 'sample' stage to make responses"
    )


def test_sample_stage_with_a_dataset_of_responses(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["data"]["train"].update(format="kwise"))
    message = error_of(path)
    assert "data.train.format is 'kwise' but a sample stage is set" in message
    assert "remove 'sample'" in message


def test_evaluate_needs_eval_data(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["data"].pop("eval"))
    assert error_of(path).endswith("evaluate needs data.eval (held-out prompts)")


def test_prompt_length_must_be_below_max_length(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["train"].update(max_prompt_length=512))
    assert error_of(path) == f"{path}: train: max_prompt_length must be smaller than max_length"


def test_reward_needs_exactly_one_source(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["annotate"]["reward"].update(model="tiny-reward"))
    assert error_of(path) == (
        f"{path}: annotate.reward: set exactly one of "
        "'function', 'model', 'judge' or 'from_data: true'"
    )


def test_non_positive_beta_is_rejected_at_validation(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d["train"]["loss"].update(beta=-1))
    assert error_of(path) == f"{path}: train.loss.beta: Input should be greater than 0"


@pytest.mark.parametrize(
    ("document", "shown"),
    [("- a\n- b\n", "['a', 'b']"), ("just text\n", "'just text'"), ("", "None")],
    ids=["list", "scalar", "empty"],
)
def test_non_mapping_document(tmp_path: Path, document: str, shown: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(document)
    assert error_of(path) == (
        f"{path}: the pipeline must be a YAML mapping (key: value), not {shown}"
    )


def test_validate_dict_names_the_source() -> None:
    with pytest.raises(AlignError, match=r"^inline: the pipeline must be a YAML mapping"):
        validate_dict(3, "inline")
    cfg = validate_dict(copy.deepcopy(BASE), "inline")
    assert isinstance(cfg, PipelineConfig)
    assert cfg.sample is not None and cfg.sample.k == 4


# ---------------------------------------------------------------------------------------------
# --set overrides


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.loss.beta=0.1", ("train.loss.beta", 0.1)),
        ("sample.k=8", ("sample.k", 8)),
        ("train.gradient_checkpointing=true", ("train.gradient_checkpointing", True)),
        ("model.reference=null", ("model.reference", None)),
        ("model.reference=", ("model.reference", None)),
        (
            "model.lora.target_modules=[q_proj, v_proj]",
            ("model.lora.target_modules", ["q_proj", "v_proj"]),
        ),
        ("model.lora={r: 8}", ("model.lora", {"r": 8})),
        ("model.policy=org/name", ("model.policy", "org/name")),
        ("description=a=b", ("description", "a=b")),
    ],
)
def test_parse_override_reads_the_value_as_yaml(text: str, expected: tuple[str, Any]) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize(
    "text", ["train.loss.beta", "=0.1", "train..beta=1", "train.loss beta=1", ".train=1"]
)
def test_parse_override_rejects_malformed_text(text: str) -> None:
    with pytest.raises(AlignError) as info:
        parse_override(text)
    assert str(info.value) == (f"--set {text!r}: expected key.path=value, e.g. train.loss.beta=0.1")


def test_overrides_change_nested_values(make_pipeline: MakePipeline) -> None:
    cfg = load_pipeline(
        make_pipeline(),
        [
            "train.loss.beta=0.5",
            "sample.k=8",
            "train.gradient_checkpointing=true",
            "model.policy=other/model",
        ],
    )
    assert cfg.train.loss.params() == {"beta": 0.5, "alpha": 0.25, "tie_break_first": False}
    assert cfg.sample is not None and cfg.sample.k == 8
    assert cfg.train.gradient_checkpointing is True
    assert cfg.model.policy == "other/model"


def test_override_null_removes_an_optional_stage(make_pipeline: MakePipeline) -> None:
    cfg = load_pipeline(make_pipeline(), ["evaluate=null"])
    assert cfg.evaluate is None


def test_override_creates_missing_levels(make_pipeline: MakePipeline) -> None:
    cfg = load_pipeline(make_pipeline(), ["model.lora.target_modules=[q_proj, v_proj]"])
    assert cfg.model.lora is not None
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.model.lora.r == 16  # the rest of the new section keeps its defaults


def test_later_override_wins(make_pipeline: MakePipeline) -> None:
    cfg = load_pipeline(make_pipeline(), ["train.learning_rate=0.001", "train.learning_rate=0.01"])
    assert cfg.train.learning_rate == 0.01


def test_overrides_are_validated(make_pipeline: MakePipeline) -> None:
    path = make_pipeline()
    assert "unknown loss 'ncaa' (did you mean 'nca'?)" in error_of(path, ["train.loss.name=ncaa"])
    assert error_of(path, ["train.los.beta=0.2"]).startswith(
        f"{path}: train.los: unknown key (did you mean 'train.loss'?)"
    )


def test_malformed_override_through_load_pipeline(make_pipeline: MakePipeline) -> None:
    assert error_of(make_pipeline(), ["train.loss.beta"]).startswith(
        "--set 'train.loss.beta': expected key.path=value"
    )


def test_overrides_do_not_touch_the_file(make_pipeline: MakePipeline) -> None:
    path = make_pipeline()
    before = path.read_text()
    load_pipeline(path, ["sample.k=8"], smoke=True)
    assert path.read_text() == before
    sample = load_pipeline(path).sample
    assert sample is not None and sample.k == 4


def test_override_loss_parameter_in_exponent_notation(make_pipeline: MakePipeline) -> None:
    cfg = load_pipeline(make_pipeline(), ["train.loss.beta=1e-3"])
    assert cfg.train.loss.params()["beta"] == pytest.approx(0.001)


# ---------------------------------------------------------------------------------------------
# --smoke


def test_smoke_applies_the_tiny_profile(make_pipeline: MakePipeline) -> None:
    cfg = load_pipeline(make_pipeline(), smoke=True)
    assert cfg.name == "mini-smoke"
    assert (cfg.model.policy, cfg.model.reference, cfg.model.dtype) == ("tiny", None, "float32")
    assert cfg.data.train.limit == 4
    assert cfg.data.eval is not None and cfg.data.eval.limit == 4
    assert cfg.train.max_steps == 2
    assert cfg.train.batch_size == 2
    assert cfg.train.precision == "fp32"
    assert (cfg.train.max_length, cfg.train.max_prompt_length) == (128, 64)
    assert cfg.sample is not None
    assert (cfg.sample.max_new_tokens, cfg.sample.batch_prompts, cfg.sample.k) == (8, 2, 4)
    assert cfg.evaluate is not None
    assert (cfg.evaluate.max_new_tokens, cfg.evaluate.limit) == (8, 4)
    # the loss and its parameters are what the smoke run exercises: unchanged
    assert cfg.train.loss.params() == {"beta": 0.1, "alpha": 0.25, "tie_break_first": False}


def test_without_smoke_nothing_changes(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d.update(smoke={"set": {"train.max_steps": 5}}))
    cfg = load_pipeline(path)
    assert cfg.name == "mini"
    assert cfg.model.policy == "org/some-model"
    assert cfg.train.max_steps is None
    assert cfg.smoke.set == {"train.max_steps": 5}


def test_smoke_does_not_add_absent_stages(make_pipeline: MakePipeline) -> None:
    def edit(d: dict[str, Any]) -> None:
        del d["sample"], d["evaluate"], d["data"]["eval"]
        d["data"]["train"]["format"] = "kwise"

    cfg = load_pipeline(make_pipeline(edit), smoke=True)
    assert cfg.sample is None and cfg.evaluate is None and cfg.data.eval is None
    assert cfg.name == "mini-smoke"


def test_smoke_set_of_the_pipeline_comes_after_the_profile(make_pipeline: MakePipeline) -> None:
    smoke = {"set": {"train.max_steps": 5, "data.train.path": "small.jsonl"}}
    cfg = load_pipeline(make_pipeline(lambda d: d.update(smoke=smoke)), smoke=True)
    assert cfg.train.max_steps == 5
    assert cfg.data.train.path == "small.jsonl"
    assert cfg.train.batch_size == 2  # the rest of the profile still applies


def test_command_line_overrides_come_after_smoke(make_pipeline: MakePipeline) -> None:
    smoke = {"set": {"train.max_steps": 5}}
    path = make_pipeline(lambda d: d.update(smoke=smoke))
    cfg = load_pipeline(path, ["train.max_steps=7", "model.policy=tiny-other"], smoke=True)
    assert cfg.train.max_steps == 7
    assert cfg.model.policy == "tiny-other"


def test_smoke_with_an_empty_set_is_a_clean_error(make_pipeline: MakePipeline) -> None:
    path = make_pipeline(lambda d: d.update(smoke={"set": None}))
    assert "smoke.set" in error_of(path, smoke=True)


# ---------------------------------------------------------------------------------------------
# the shipped pipelines


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
@pytest.mark.parametrize("name", ["quickstart", "nca-7b"])
def test_shipped_pipelines_validate(name: str, smoke: bool) -> None:
    cfg = load_pipeline(PIPELINES / f"{name}.yaml", smoke=smoke)
    assert cfg.name == (f"{name}-smoke" if smoke else name)
    assert cfg.train.loss.name == "nca"
    if smoke:
        assert cfg.model.policy == "tiny"
        assert cfg.train.max_steps == 2


def test_nca_7b_smoke_reads_the_local_ultrafeedback_file() -> None:
    full = load_pipeline(PIPELINES / "nca-7b.yaml")
    assert full.data.train.hf_dataset == "ChenDRAG/ultrafeedback_reward"
    assert full.model.dtype == "bfloat16"
    cfg = load_pipeline(PIPELINES / "nca-7b.yaml", smoke=True)
    assert cfg.data.train.hf_dataset is None
    assert cfg.data.train.path == "data/smoke/ultrafeedback_reward.jsonl"
    assert cfg.data.train.format == "ultrafeedback"
    assert cfg.data.train.fields == {"id": "prompt_id"}
    assert cfg.model.dtype == "float32"
    assert cfg.sample is None
    assert cfg.annotate.reward.from_data is True
