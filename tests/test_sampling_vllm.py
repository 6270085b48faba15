"""`sample.backend: vllm`: refused clearly where vLLM is not installed, and the adapter's
contract with vLLM's API (token-id prompts, n=K per request, per-request seeds, finish reasons)
checked against a stand-in `vllm` module that records what it is asked (vLLM itself needs a GPU
and is not installed on CPU machines)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import yaml

from align.config import load_pipeline
from align.core.errors import AlignError
from align.core.packages import installed
from align.generate.vllm_engine import VLLMSampler
from align.model.loading import load_tokenizer, resolve_model
from tests.conftest import REPO


@pytest.mark.skipif(installed("vllm"), reason="vLLM is installed here")
def test_vllm_backend_is_refused_with_the_fix_where_not_installed() -> None:
    with pytest.raises(AlignError) as err:
        load_pipeline(str(REPO / "pipelines/quickstart.yaml"), ["sample.backend=vllm"])
    assert "sample: backend: 'vllm' needs the vllm package" in str(err.value)
    assert "or use backend: hf" in str(err.value)


class _Completion(types.SimpleNamespace):
    pass


def _fake_vllm(calls: dict) -> types.ModuleType:
    vllm = types.ModuleType("vllm")
    inputs = types.ModuleType("vllm.inputs")

    class LLM:
        def __init__(self, **kwargs: object) -> None:
            calls["engine"] = kwargs

        def shutdown(self) -> None:
            calls["shutdown"] = calls.get("shutdown", 0) + 1

        def generate(self, requests: list, params: list, use_tqdm: bool) -> list:
            calls["requests"], calls["params"] = requests, params
            return [
                types.SimpleNamespace(
                    outputs=[
                        _Completion(text=f"r{i}.{j}", finish_reason="stop" if j else "length")
                        for j in range(p["n"])
                    ]
                )
                for i, p in enumerate(params)
            ]

    distributed = types.ModuleType("vllm.distributed")

    def cleanup_dist_env_and_memory() -> None:
        calls["cleanup"] = calls.get("shutdown", 0)  # how many shutdowns came before it

    distributed.cleanup_dist_env_and_memory = cleanup_dist_env_and_memory
    vllm.LLM, vllm.SamplingParams = LLM, dict
    inputs.TokensPrompt = dict
    vllm.inputs, vllm.distributed = inputs, distributed
    return vllm


def _install(monkeypatch: pytest.MonkeyPatch, calls: dict) -> None:
    fake = _fake_vllm(calls)
    for name, module in (
        ("vllm", fake),
        ("vllm.inputs", fake.inputs),
        ("vllm.distributed", fake.distributed),
    ):
        monkeypatch.setitem(sys.modules, name, module)


def test_vllm_adapter_sends_our_token_ids_with_n_k_and_maps_finish_reasons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: dict = {}
    _install(monkeypatch, calls)
    path = Path(resolve_model("tiny"))
    tokenizer = load_tokenizer(path)
    prompts = [[{"role": "user", "content": "2 + 3?"}], [{"role": "user", "content": "7 - 1?"}]]

    sampler = VLLMSampler(path, "bfloat16", seed=5)
    texts, finished = sampler.generate(
        tokenizer, prompts, k=3, max_new_tokens=16, temperature=0.7, top_p=0.9, seed=100
    )

    assert calls["engine"] == {
        "model": str(path),
        "tokenizer": str(path),
        "dtype": "bfloat16",
        "seed": 5,
        "tensor_parallel_size": 1,
    }
    expected_ids = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True) for p in prompts
    ]
    got_ids = [r["prompt_token_ids"] for r in calls["requests"]]
    assert got_ids == [list(getattr(e, "input_ids", e)) for e in expected_ids]
    assert [(p["n"], p["seed"], p["max_tokens"]) for p in calls["params"]] == [
        (3, 100, 16),
        (3, 101, 16),
    ]
    assert all(p["temperature"] == 0.7 and p["top_p"] == 0.9 for p in calls["params"])
    assert texts == [["r0.0", "r0.1", "r0.2"], ["r1.0", "r1.1", "r1.2"]]
    assert finished == [[False, True, True], [False, True, True]]


def test_the_sample_stage_shuts_the_engine_down_before_returning(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine holds most of the GPU: the stage shuts it down (then vLLM's own cleanup and
    the CUDA cache) before the next stage, whether sampling ends or fails."""
    from align.stages.sample import sample_stage

    calls: dict = {}
    _install(monkeypatch, calls)
    monkeypatch.setattr("align.core.packages.installed", lambda name: True)
    cfg = load_pipeline("pipelines/quickstart.yaml", ["sample.backend=vllm"], smoke=True)
    upstream = {"prepare-model": {"summary": {"policy": {"path": str(resolve_model("tiny"))}}}}
    summary, _ = sample_stage(cfg, project / "sample", upstream, "h")
    assert summary["k"] == cfg.sample.k and list((project / "sample").glob("*"))
    assert (calls["shutdown"], calls["cleanup"]) == (1, 1)

    def broken(*args: object, **kwargs: object) -> list:
        raise RuntimeError("engine died")

    calls.clear()
    monkeypatch.setattr(sys.modules["vllm"].LLM, "generate", broken)
    with pytest.raises(RuntimeError, match="engine died"):
        sample_stage(cfg, project / "sample-2", upstream, "h")
    assert calls["shutdown"] == 1


def test_the_engine_dtype_follows_the_pipeline_not_the_cpu_default(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from align.generate.vllm_engine import vllm_dtype

    monkeypatch.setattr("align.core.packages.installed", lambda name: True)
    raw = yaml.safe_load((project / "pipelines/quickstart.yaml").read_text())
    del raw["model"]["dtype"], raw["sample"]["dtype"]
    (project / "pipelines/no-dtype.yaml").write_text(yaml.safe_dump(raw))

    def dtype(*overrides: str) -> str:
        cfg = load_pipeline("pipelines/no-dtype.yaml", ["sample.backend=vllm", *overrides])
        return vllm_dtype(cfg, cfg.sample.dtype)

    assert dtype() == "auto"  # model.dtype unset: not the schema's float32
    assert dtype("model.dtype=bfloat16") == "bfloat16"
    assert dtype("model.dtype=float32") == "float32"  # asked for: honoured
    assert dtype("model.dtype=float32", "sample.dtype=bfloat16") == "bfloat16"


def test_tensor_parallel_reaches_the_engine_and_needs_vllm(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from align.stages.sample import sample_stage

    calls: dict = {}
    _install(monkeypatch, calls)
    monkeypatch.setattr("align.core.packages.installed", lambda name: True)
    overrides = ["sample.backend=vllm", "sample.tensor_parallel=2"]
    cfg = load_pipeline("pipelines/quickstart.yaml", overrides, smoke=True)
    upstream = {"prepare-model": {"summary": {"policy": {"path": str(resolve_model("tiny"))}}}}
    sample_stage(cfg, project / "sample", upstream, "h")
    assert calls["engine"]["tensor_parallel_size"] == 2
    with pytest.raises(AlignError, match="tensor_parallel: 2 splits the model inside a vLLM"):
        load_pipeline("pipelines/quickstart.yaml", ["sample.tensor_parallel=2"])


HTTP_JUDGE = "judge.backend={kind: openai, model: judge-model, base_url: 'http://127.0.0.1:9/v1'}"


def test_the_judge_stage_answers_with_vllm_and_shuts_the_engine_down(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """judge.policy_backend: vllm: the trained policy's MT-Bench / AlpacaEval answers come from
    one engine (a call per temperature, n=1, seeded), shut down before the stage returns."""
    import shutil

    from align.stages.judge import judge_stage

    calls: dict = {}
    _install(monkeypatch, calls)
    monkeypatch.setattr("align.core.packages.installed", lambda name: True)
    cfg = load_pipeline(
        "pipelines/quickstart.yaml", ["judge.policy_backend=vllm", HTTP_JUDGE], smoke=False
    )
    trained = project / cfg.runs_dir / cfg.name / "train" / "model"
    shutil.copytree(resolve_model("tiny"), trained)
    answered: dict = {}

    def run_judge(jc, generate_fn, out, model_id, cache_dir, *, device) -> dict:
        conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
        answered["texts"] = generate_fn(conversations, [0.0, 0.7, 0.0], 16)
        answered["params"] = list(calls["params"])
        answered["shutdown_while_judging"] = calls.get("shutdown", 0)
        return {}

    monkeypatch.setattr("align.judging.run.run_judge", run_judge)
    summary, _ = judge_stage(cfg, project / "judge", {}, "h")
    # t=0.0 asks for q0 and q2 in one call, then t=0.7 for q1: each text is its request's
    assert answered["texts"] == ["r0.0", "r0.0", "r1.0"]
    last_call = [(p["n"], p["temperature"], p["max_tokens"]) for p in answered["params"]]
    assert last_call == [(1, 0.7, 16)]
    assert answered["shutdown_while_judging"] == 0 and calls["shutdown"] == 1
    assert Path(calls["engine"]["model"]).resolve() == trained.resolve()
    assert summary["device"].endswith("(vllm)")


def test_judge_policy_vllm_is_refused_where_it_cannot_run(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    qs = "pipelines/quickstart.yaml"
    if not installed("vllm"):
        with pytest.raises(AlignError, match="judge: policy_backend: 'vllm' needs the vllm pack"):
            load_pipeline(qs, ["judge.policy_backend=vllm", HTTP_JUDGE])
    monkeypatch.setattr("align.core.packages.installed", lambda name: True)
    with pytest.raises(AlignError, match="keeps most of the GPU for its cache while the local"):
        load_pipeline(qs, ["judge.policy_backend=vllm"])  # the quickstart's judge is local
    cpu = r"model\.device: 'cpu' but judge\.policy_backend is vllm"
    with pytest.raises(AlignError, match=cpu):
        load_pipeline(qs, ["judge.policy_backend=vllm", HTTP_JUDGE, "model.device=cpu"])
    # a recipe that answers with vLLM still smoke-runs: the smoke judge is local, on HF
    raw = yaml.safe_load((project / qs).read_text())
    raw["judge"]["policy_backend"] = "vllm"
    raw["judge"]["backend"] = {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}
    (project / "pipelines/vllm-judge.yaml").write_text(yaml.safe_dump(raw))
    assert load_pipeline("pipelines/vllm-judge.yaml", smoke=True).judge.policy_backend == "hf"
