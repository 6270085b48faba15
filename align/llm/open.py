"""Opening the configured backend (HTTP or local model) behind the persistent answer cache."""

from __future__ import annotations

from pathlib import Path

import torch

from align.config.judge import BackendConfig
from align.llm.backend import Backend
from align.llm.cache import CachedBackend, JudgmentCache
from align.llm.http import OpenAIBackend
from align.llm.local import LocalBackend


def make_backend(cfg: BackendConfig, device: torch.device | str = "cpu") -> Backend:
    """The configured backend. The local model is loaded on first use (on `device`), so a fully
    cached run never loads it; the HTTP backend checks its API key variable now."""
    if cfg.kind == "openai":
        return OpenAIBackend(cfg)
    return LocalBackend(cfg, device)


def open_backend(
    cfg: BackendConfig, cache_dir: Path, *, device: torch.device | str = "cpu"
) -> CachedBackend:
    """The configured backend behind the judgment cache; a local model runs on `device`."""
    return CachedBackend(make_backend(cfg, device), JudgmentCache(Path(cache_dir)))
