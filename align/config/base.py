"""What every config section shares: unknown keys are errors, dtypes are a closed vocabulary,
output folders stay inside the project."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

Dtype = Literal["float32", "bfloat16"]


class Strict(BaseModel):
    """Unknown keys are errors (a typo must never be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


def inside_project(value: str | None, key: str) -> None:
    """Output folders stay inside the project: relative, without '..', so a run
    can never write over or delete anything outside it."""
    if value is None:
        return
    path = Path(value)
    if not value.strip() or path.is_absolute() or ".." in path.parts or value.startswith("~"):
        raise ValueError(
            f"{key}: {value!r} must be a relative folder inside the project without '..' "
            "(outputs never go outside it), e.g. 'runs'"
        )
