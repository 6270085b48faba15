"""The stages: each module turns a validated config and its upstream manifests into one stage's
output folder (no Prefect, no DVC).

Every runner takes (cfg, out folder, upstream manifests, stage hash) and returns (summary figures
for the manifest, paths that must exist for the output to count as current). A stage's code
fingerprint covers its own module here and the packages it imports (align/pipeline/code.py).
"""

from align.stages.annotate import annotate_stage
from align.stages.evaluate import evaluate_stage
from align.stages.judge import judge_stage
from align.stages.prepare_model import prepare_model_stage
from align.stages.rewrite import rewrite_stage
from align.stages.sample import sample_stage
from align.stages.train import train_stage

RUNNERS = {
    "prepare-model": prepare_model_stage,
    "sample": sample_stage,
    "annotate": annotate_stage,
    "rewrite": rewrite_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
    "judge": judge_stage,
}
