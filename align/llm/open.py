"""Opening the configured backend (HTTP or local model) behind the persistent answer cache."""

from __future__ import annotations

from pathlib import Path

from align.config.judge import BackendConfig
from align.llm.backend import Backend
from align.llm.cache import CachedBackend, JudgmentCache
from align.llm.http import OpenAIBackend
from align.llm.local import LocalBackend


def make_backend(cfg: BackendConfig) -> Backend:
    """The configured backend. The local model is loaded on first use, so a fully cached run
    never loads it; the HTTP backend checks its API key variable now."""
    if cfg.kind == "openai":
        return OpenAIBackend(cfg)
    return LocalBackend(cfg)


def open_backend(cfg: BackendConfig, cache_dir: Path) -> CachedBackend:
    """The configured backend behind the judgment cache."""
    return CachedBackend(make_backend(cfg), JudgmentCache(Path(cache_dir)))
