"""Training examples: annotated records tokenised once into an Arrow file that the trainer
memory-maps, so a step reads only its own rows and memory does not grow with the dataset.

`write_examples` streams the records a batch at a time into `examples.arrow` (the file appears
whole or not at all); `ExampleStore` indexes it. Token ids are stored as int32 and every float as
float64, so an example reads back exactly as it was built.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, fields
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
EXAMPLES_FILE = "examples.arrow"  # in the train stage folder, removed when training ends
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


FIELDS = tuple(f.name for f in fields(Example))


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    written = 0
    try:
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, SCHEMA) as writer:
            for batch in batched(records, WRITE_BATCH):
                examples = [build_example(rec, tokenizer, cfg) for rec in batch]
                columns = {f: [getattr(e, f) for e in examples] for f in FIELDS}
                writer.write_table(pa.table(columns, schema=SCHEMA))
                written += len(examples)
        if not written:
            raise AlignError("train: the annotated data holds no records")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written


class ExampleStore:
    """The examples of an `examples.arrow` file, memory-mapped: `store[i]` reads row i only."""

    def __init__(self, path: Path):
        self.table = ipc.open_file(pa.memory_map(str(path))).read_all()

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> Example:
        return Example(**self.table.slice(i, 1).to_pylist()[0])
