"""Training examples: annotated records tokenised once into an Arrow file that the trainer
memory-maps, so a step reads only its own rows and memory does not grow with the dataset.

`write_examples` streams the records a batch at a time into `examples.arrow` (the file appears
whole or not at all); `ExampleStore` indexes it. Token ids are stored as int32 and every float as
float64, so an example reads back exactly as it was built. The machinery is general: `write_rows`
and `ArrowRows` hold rows of any schema (online training's prompts, align/train/online.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
from transformers import PreTrainedTokenizerBase

from align.config import PipelineConfig
from align.config.losses import LossParams
from align.core.errors import AlignError
from align.data.records import batched
from align.model.tokenize import encode_record

TOKENS = pa.list_(pa.int32())
FLOATS = pa.list_(pa.float64())
SCHEMA = pa.schema(
    [
        ("prompt", TOKENS),
        ("responses", pa.list_(TOKENS)),
        ("rewards", FLOATS),
        ("ref_logps", FLOATS),
        ("diff_masks", pa.list_(pa.list_(pa.int8()))),
        ("ref_token_logps", pa.list_(FLOATS)),
        ("aux_rewards", FLOATS),
    ]
)
# in the train stage folder (online training: its prompts), removed when training ends
EXAMPLES_FILE = "examples.arrow"
WRITE_BATCH = 1024  # records tokenised and written at a time


@dataclass
class Example:
    prompt: list[int]
    responses: list[list[int]]
    rewards: list[float]
    ref_logps: list[float]
    diff_masks: list[list[int]] | None = None  # BMC: from the rewrite stage, one per response
    ref_token_logps: list[list[float]] | None = None  # BMC: reference log-prob of each token
    aux_rewards: list[float] | None = None  # UPO: R = sum_i w_i r_i per response (annotate)


def build_example(rec: dict, tokenizer: PreTrainedTokenizerBase, cfg: PipelineConfig) -> Example:
    """One annotated record, tokenised; checks K against the loss's minimum and the extras the
    loss needs (BMC masks, UPO aux rewards)."""
    spec = cfg.train.loss
    if "ref_logps" not in rec:
        raise AlignError(f"record {rec['id']}: no ref_logps; re-run the annotate stage")
    if len(rec["responses"]) < spec.min_k:
        raise AlignError(
            f"record {rec['id']}: {len(rec['responses'])} responses but loss "
            f"{spec.name!r} needs K >= {spec.min_k}"
        )
    prompt, responses = encode_record(
        tokenizer, rec, cfg.train.max_length, cfg.train.max_prompt_length
    )
    _check_extras(rec, spec, [len(r) for r in responses])
    return Example(
        prompt,
        responses,
        rec["rewards"],
        rec["ref_logps"],
        rec.get("diff_masks"),
        rec.get("ref_token_logps"),
        rec.get("aux_rewards"),
    )


def _check_extras(rec: dict, spec: LossParams, lengths: list[int]) -> None:
    """BMC records need diff masks and per-token reference log-probs that cover exactly the
    response tokens; UPO records need aux rewards."""
    if spec.token_weights == "bmc":
        for key in ("diff_masks", "ref_token_logps"):
            stored = rec.get(key)
            if stored is None or [len(x) for x in stored] != lengths:
                raise AlignError(
                    f"record {rec['id']}: {key} missing or not matching the response tokens "
                    f"{lengths}; loss {spec.name!r} trains on the rewrite stage's output: "
                    "re-run `align stage <pipeline> rewrite`"
                )
    if spec.kind == "upo" and rec.get("aux_rewards") is None:
        raise AlignError(
            f"record {rec['id']}: no aux_rewards; loss 'upo' needs train.aux_rewards computed "
            "by annotate: re-run the annotate stage"
        )


def write_examples(
    records: Iterable[dict], tokenizer: PreTrainedTokenizerBase, cfg: PipelineConfig, path: Path
) -> int:
    """Tokenise `records` into the Arrow file `path`, WRITE_BATCH records in memory at a time;
    the number written. On an error no file is left under `path`."""
    examples = (vars(build_example(rec, tokenizer, cfg)) for rec in records)
    return write_rows(examples, SCHEMA, path, "train: the annotated data")


def write_rows(rows: Iterable[dict], schema: pa.Schema, path: Path, what: str) -> int:
    """Write `rows` (dicts of `schema`'s fields) to the Arrow file `path`, WRITE_BATCH at a time;
    the number written. No rows is an error naming `what`; on an error no file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    written = 0
    try:
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, schema) as writer:
            for batch in batched(rows, WRITE_BATCH):
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                written += len(batch)
        if not written:
            raise AlignError(f"{what} holds no records")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written


class ArrowRows:
    """The rows of an Arrow file (`write_rows`), memory-mapped: `rows[i]` reads row i only."""

    def __init__(self, path: Path):
        self.table = ipc.open_file(pa.memory_map(str(path))).read_all()

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict:
        return self.table.slice(i, 1).to_pylist()[0]


class ExampleStore:
    """The examples of an `examples.arrow` file, memory-mapped: `store[i]` reads row i only."""

    def __init__(self, path: Path):
        self.rows = ArrowRows(path)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        return Example(**self.rows[i])
