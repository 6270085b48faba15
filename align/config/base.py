"""What every config section shares: unknown keys are errors, numbers are strict, finite and fit
in 64 bits, dtypes are a closed vocabulary, output folders stay inside the project."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

Dtype = Literal["float32", "bfloat16"]
INT_LIMIT = 2**63  # every integer in a pipeline fits a signed 64-bit slot (seeds, counts)


class Strict(BaseModel):
    """Unknown keys are errors (a typo must never be silently ignored); values keep their YAML
    type (`true` is not the number 1, "4" is not 4); floats are finite (no `.inf`, `.nan`:
    no field of a pipeline means anything by them); integers fit in 64 bits."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _ints_fit(cls, value: Any) -> Any:
        if _too_large(value):
            raise ValueError(
                f"must be between -2**63 and 2**63 - 1, got a number of {_digits(value)} digits"
            )
        return value


def _too_large(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return not -INT_LIMIT <= value < INT_LIMIT
    if isinstance(value, list | tuple):
        return any(_too_large(v) for v in value)
    if isinstance(value, dict):
        return any(_too_large(v) for v in value.values())
    return False


def _digits(value: Any) -> int:
    if isinstance(value, int):
        return len(str(abs(value)))
    items = value.values() if isinstance(value, dict) else value
    return max(_digits(v) for v in items if _too_large(v))


def check_vllm_installed(field: str) -> None:
    """Refuse `field: vllm` (one line, with the fix) where the vllm package is not installed."""
    from align.core.packages import installed

    if not installed("vllm"):
        raise ValueError(
            f"{field}: 'vllm' needs the vllm package, which is not installed here; install it "
            f"on the GPU machine (pip install vllm) or use {field}: hf"
        )


def inside_project(value: str | None, key: str, root: Path | None = None) -> None:
    """Output folders stay inside the project: relative, without '..', not the project folder
    itself, and still inside it once symbolic links are resolved, so a run can never write over
    or delete anything outside its own folders. `root`: the project (default: the working
    directory, where every align command runs)."""
    if value is None:
        return
    path = Path(value)
    if not value.strip() or path.is_absolute() or ".." in path.parts or value.startswith("~"):
        raise ValueError(
            f"{key}: {value!r} must be a relative folder inside the project without '..' "
            "(outputs never go outside it), e.g. 'runs'"
        )
    project = (root or Path.cwd()).resolve()
    real = (project / path).resolve()
    if real == project:
        raise ValueError(
            f"{key}: {value!r} is the project folder itself; outputs go in a folder of their own, "
            "e.g. 'runs'"
        )
    if not real.is_relative_to(project):
        raise ValueError(
            f"{key}: {value!r} leads to {real} through a symbolic link, outside the project "
            f"{project}; outputs never go outside it: remove the link or pick another folder"
        )
