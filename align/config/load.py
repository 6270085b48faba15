"""From a YAML path to a validated `PipelineConfig`: the smoke profile, `--set` overrides, and
validation errors as one line per problem naming the file, the YAML path and the valid values.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from align.config.losses import LOSS_MODELS
from align.config.pipeline import PipelineConfig
from align.config.reading import InputTooLarge, parse_yaml, read_yaml, yaml_problem
from align.core.errors import AlignError

# Applied by --smoke before the pipeline's own `smoke.set`: the exact stage structure on the
# tiny model with a handful of records, in a separate run folder.
SMOKE_PROFILE: dict[str, Any] = {
    "model.policy": "tiny",
    "model.reference": None,
    "model.dtype": "float32",
    "data.train.limit": 4,
    "train.max_steps": 2,
    "train.save_steps": 1,
    "train.batch_size": 2,
    "train.grad_accum": 1,
    "train.precision": "fp32",
    "train.max_length": 128,
    "train.max_prompt_length": 64,
    "train.global_batch": None,  # the recipe's global batch is not the smoke run's
    "model.device": "auto",  # a smoke run runs where it is started
}


SMOKE_JUDGE = {"kind": "local", "model": "tiny", "max_new_tokens": 8}
SMOKE_IF_PRESENT = {
    "sample": {"sample.max_new_tokens": 8, "sample.batch_prompts": 2, "sample.shard_size": 2},
    "evaluate": {"evaluate.max_new_tokens": 8, "evaluate.limit": 4},
    "data.eval": {"data.eval.limit": 4},
    # the whole backend is replaced: openai-only keys must not survive on a local judge
    "judge": {"judge.backend": SMOKE_JUDGE},
    "judge.mtbench": {"judge.mtbench.limit": 2, "judge.mtbench.max_new_tokens": 8},
    "judge.alpacaeval": {"judge.alpacaeval.limit": 3, "judge.alpacaeval.max_new_tokens": 8},
    "annotate.reward.judge": {"annotate.reward.judge.backend": SMOKE_JUDGE},
    "train.preference.judge": {"train.preference.judge.backend": SMOKE_JUDGE},
    "train.online": {"train.rollout.max_new_tokens": 8},
    "rewrite": {"rewrite.backend": SMOKE_JUDGE},
    "train.preference.reward.judge": {"train.preference.reward.judge.backend": SMOKE_JUDGE},
    # a smoke run judges locally on the tiny model, which HF generate answers for
    "judge.policy_backend": {"judge.policy_backend": "hf"},
    # one process, like train.distributed: null in the recipes' smoke sets
    "sample.processes": {"sample.processes": 1},
    "annotate.processes": {"annotate.processes": 1},
}


def parse_override(text: str) -> tuple[str, Any]:
    """'train.loss.beta=0.1' -> ('train.loss.beta', 0.1); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
        raise AlignError(f"--set {text!r}: expected key.path=value, e.g. train.loss.beta=0.1")
    try:
        return key, parse_yaml(value) if value else None
    except InputTooLarge as exc:
        raise AlignError(f"--set {key}: {yaml_problem(exc)[1]}") from None
    except yaml.YAMLError as exc:
        problem = yaml_problem(exc)[1].removesuffix("; fix the syntax")
        raise AlignError(
            f"--set {text!r}: the value is not valid YAML: {problem}; quote it, "
            "e.g. --set 'train.loss={name: dpo, beta: 0.1}'"
        ) from None


def set_path(data: dict, key: str, value: Any) -> None:
    """Set a dotted key in a nested dict, creating missing levels."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _get_path(data: dict, key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _apply_smoke(raw: dict) -> None:
    for key, value in SMOKE_PROFILE.items():
        set_path(raw, key, value)
    for present, overrides in SMOKE_IF_PRESENT.items():
        if _get_path(raw, present) is not None:
            for key, value in overrides.items():
                set_path(raw, key, value)
    smoke = raw.get("smoke")
    extra = smoke.get("set") if isinstance(smoke, dict) else None
    for key, value in (extra if isinstance(extra, dict) else {}).items():
        set_path(raw, key, value)
    raw["name"] = f"{raw.get('name', 'pipeline')}-smoke"


def _resolve(loc: tuple) -> tuple[tuple, type[BaseModel] | None]:
    """`loc` without the tags pydantic inserts after a discriminated union (('train', 'loss',
    'nca', 'beta') -> ('train', 'loss', 'beta')), and the pydantic model whose fields live at
    it (for 'did you mean' on unknown keys), None where `loc` ends at a plain value."""
    model: Any = PipelineConfig
    shown: list = []
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        shown.append(part)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            model = None
            continue
        field = model.model_fields.get(str(part))
        model = None if field is None else field.annotation
        members = typing.get_args(model) if _is_union(model) else ()
        if field is not None and field.discriminator and parts:
            tag = parts.pop(0)  # the union member pydantic validated against
            model = next((m for m in members if tag in _tags(m, field.discriminator)), None)
        elif members:
            model = next((a for a in members if a is not type(None)), None)
    found = model if isinstance(model, type) and issubclass(model, BaseModel) else None
    return tuple(shown), found


def _is_union(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union


def _tags(model: Any, discriminator: Any) -> tuple:
    field = getattr(model, "model_fields", {}).get(str(discriminator))
    return typing.get_args(field.annotation) if field is not None else ()


def _keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _format_error(err: dict) -> str:
    raw = tuple(p for p in err["loc"] if not str(p).startswith("function-after"))
    loc, _ = _resolve(raw)
    where = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        _, parent = _resolve(raw[:-1])
        valid = _keys(parent) if parent else []
        hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        return (
            f"{where}: unknown key"
            + (f" (did you mean {'.'.join(map(str, (*loc[:-1], hint[0])))!r}?)" if hint else "")
            + (f"; valid keys here: {', '.join(valid)}" if valid else "")
        )
    if err["type"] == "union_tag_invalid":  # e.g. train.loss.name: unknown loss 'ncaa'
        key, tag = err["ctx"]["discriminator"].strip("'"), err["ctx"]["tag"]
        valid = sorted(t.strip("'") for t in err["ctx"]["expected_tags"].split(", "))
        hint = difflib.get_close_matches(tag, valid, n=1)
        return (
            f"{where}.{key}: unknown {loc[-1]} {tag!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; valid: {', '.join(valid)}"
        )
    if err["type"] == "union_tag_not_found":  # e.g. train.loss without a name
        key = err["ctx"]["discriminator"].strip("'")
        return f"{where}.{key}: Field required"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # whole-pipeline checks name their keys in the message
        return msg
    if err["type"] == "literal_error":
        valid = re.findall(r"'([^']*)'", err["ctx"]["expected"])
        hint = difflib.get_close_matches(str(err.get("input")), valid, n=1)
        msg = f"{_shown(err.get('input'))} is not one of {err['ctx']['expected']}" + (
            f" (did you mean {hint[0]!r}?)" if hint else ""
        )
    elif err["type"].endswith(("_parsing", "_type")) and _short_scalar(err.get("input")):
        msg = f"{msg}; got {err['input']!r}"
    return f"{where}: {msg}"


def _shown(value: Any, limit: int = 60) -> str:
    """A wrong value as the error echoes it: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-1]}"


def _short_scalar(value: Any) -> bool:
    """Whether a wrong value is worth echoing (short and plain: never a whole section)."""
    return isinstance(value, str | int | float | bool) and len(repr(value)) <= 40


def validate_dict(raw: Any, source: str) -> PipelineConfig:
    """Validate a parsed YAML document; every problem becomes one line naming `source`."""
    if not isinstance(raw, dict):
        raise AlignError(f"{source}: the pipeline must be a YAML mapping (key: value), not {raw!r}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = sorted({_format_error(e) for e in exc.errors()})
        raise AlignError("; ".join(f"{source}: {line}" for line in lines)) from None


def switch_loss(raw: dict, overrides: dict[str, Any]) -> list[str]:
    """When `--set train.loss.name=X` changes the loss, drop the YAML's loss parameters that X
    does not accept (a parameter given by `--set` itself is kept and validated); returns the
    dropped keys. Unknown loss names are left to validation, which names the valid ones."""
    loss = _get_path(raw, "train.loss")
    name = overrides.get("train.loss.name")
    model = LOSS_MODELS.get(name) if isinstance(name, str) else None
    if model is None or not isinstance(loss, dict):
        return []
    accepted = {"name", *_keys(model)}
    dropped = [key for key in loss if key not in accepted and f"train.loss.{key}" not in overrides]
    for key in dropped:
        del loss[key]
    return dropped


def load_pipeline(
    path: str | Path,
    overrides: list[str] | None = None,
    smoke: bool = False,
    notes: list[str] | None = None,
) -> PipelineConfig:
    """Read, override, smoke-profile and validate a pipeline YAML. `notes`, when given,
    receives one line per adjustment the overrides caused (loss parameters dropped)."""
    path = Path(path)
    raw = copy.deepcopy(read_yaml(path))
    if not isinstance(raw, dict):
        return validate_dict(raw, str(path))
    if smoke:
        _apply_smoke(raw)
    parsed = [parse_override(text) for text in overrides or []]
    for key, value in parsed:
        set_path(raw, key, value)
    dropped = switch_loss(raw, dict(parsed))
    if dropped and notes is not None:
        name = raw["train"]["loss"]["name"]
        kept = [k for k in raw["train"]["loss"] if k != "name"]
        notes.append(
            f"--set train.loss.name={name}: dropped {path}'s {', '.join(dropped)} "
            f"({'not a parameter' if len(dropped) == 1 else 'not parameters'} of {name})"
            + (f"; kept {', '.join(kept)}" if kept else "")
        )
    return validate_dict(raw, str(path))
