"""The commit a Hugging Face Hub revision (branch, tag or commit) points to, for fingerprints.

A hub id alone says nothing about which version of a dataset or model was read: a stage hash
that holds only `org/name` would never notice an upstream update. The commit hash does. Online,
the hub answers; offline (HF_HUB_OFFLINE=1) the ref the local hub cache recorded at the last
download does; when neither knows, the requested name is kept with an `unresolved:` prefix, so
the lineage says plainly that the version was not pinned.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

COMMIT = re.compile(r"[0-9a-f]{40}")


@functools.cache
def resolved_revision(repo_id: str, repo_type: str, revision: str | None) -> str:
    """The 40-hex commit of `revision` (default: the main branch) of hub repo `repo_id`
    (`repo_type`: 'model' or 'dataset'), or 'unresolved:<revision>'."""
    from huggingface_hub import HfApi, constants

    revision = revision or "main"
    if COMMIT.fullmatch(revision):
        return revision
    if not constants.HF_HUB_OFFLINE:
        try:
            return HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision).sha
        except Exception:  # unreachable hub, unknown repo or revision: fall back to the cache
            pass
    folder = f"{repo_type}s--{repo_id.replace('/', '--')}"
    ref = Path(constants.HF_HUB_CACHE) / folder / "refs" / revision
    if ref.is_file() and COMMIT.fullmatch(ref.read_text().strip()):
        return ref.read_text().strip()
    return f"unresolved:{revision}"
