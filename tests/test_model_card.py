"""The trained model folder carries a Hub model card: huggingface_hub reads its metadata back."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

from align.config import load_pipeline
from align.core.io import read_json, sha256_file
from align.pipeline import plan, run_stage, stage_folder
from align.stages.model_card import EMBEDDED_HUB_ID, hub_base_model

QS = "pipelines/quickstart.yaml"


def test_train_stage_writes_a_hub_model_card(project: Path) -> None:
    cfg = load_pipeline(QS, smoke=True)
    manifests = {}
    for p in plan(cfg):
        manifests[p.name] = run_stage(cfg, p.name)[0]
        if p.name == "train":
            break
    model = stage_folder(cfg, "train") / "model"
    card = ModelCard.load(model / "README.md")
    meta = card.data.to_dict()

    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["datasets"] == [cfg.data.train.path]
    train_data = meta["align_datasets"][0]
    assert train_data == {
        "role": "train",
        "name": cfg.data.train.path,
        "sha256": sha256_file(Path(cfg.data.train.path)),
    }
    assert meta["align_loss"] == {"name": "nca", **cfg.train.loss.params()}
    assert (meta["align_loss"]["beta"], meta["align_loss"]["alpha"]) == (0.1, 0.25)
    assert "nca" in meta["tags"] and "align" in meta["tags"]
    metrics = read_json(stage_folder(cfg, "train") / "metrics.json")
    assert meta["align_metrics"]["steps"] == metrics["steps"] == 2
    assert meta["align_metrics"]["final/loss"] == metrics["final/loss"]
    lineage = meta["align_lineage"]
    assert lineage["train_stage_hash"] == manifests["train"]["stage_hash"]
    assert lineage["upstream_stage_hashes"]["annotate"] == manifests["annotate"]["stage_hash"]
    prep = manifests["prepare-model"]["summary"]["policy"]
    assert lineage["policy_model"] == {"source": prep["source"], "weights_sha256": prep["hash"]}
    # the smoke profile trains the random `tiny` model: no Hub page to name as base model
    assert cfg.model.policy == "tiny" and "base_model" not in meta
    assert "# quickstart-smoke" in card.text


def test_base_model_is_a_hub_id_or_absent(tmp_path: Path) -> None:
    assert hub_base_model("embedded") == EMBEDDED_HUB_ID
    assert hub_base_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub_base_model("tiny") is None
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").mkdir()
    assert hub_base_model(str(tmp_path / "org" / "model")) is None
