"""Optional packages: whether one is installed, asked without importing it (vLLM and DeepSpeed
take seconds to import and exist only on GPU machines; validating a pipeline must stay fast)."""

from __future__ import annotations

import importlib.util


def installed(package: str) -> bool:
    """Whether `package` can be imported here; nothing is imported."""
    return importlib.util.find_spec(package) is not None
