"""configs/k8s/gpu-work-pool.json: a Kubernetes work pool template that Prefect accepts and that
puts a flow run's pod on a GPU node with the run folder and model cache on shared volumes."""

from __future__ import annotations

import json

from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.templating import apply_values

from tests.conftest import REPO

TEMPLATE = json.loads((REPO / "configs/k8s/gpu-work-pool.json").read_text())


def test_prefect_accepts_the_template_as_a_kubernetes_pool() -> None:
    pool = WorkPoolCreate(name="align-gpu", type="kubernetes", base_job_template=TEMPLATE)
    assert pool.base_job_template["variables"]["required"] == ["image"]


def test_a_flow_run_lands_on_a_gpu_node_with_the_shared_run_folder() -> None:
    variables = TEMPLATE["variables"]["properties"]
    values = {k: v["default"] for k, v in variables.items() if "default" in v}
    values.update(name="align-nca-7b", image="registry.example.com/align:cu128", gpus=8)
    values.update(command="prefect flow-run execute")
    job = apply_values(TEMPLATE["job_configuration"], values)
    pod = job["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert container["env"]["ALIGN_PROJECT_DIR"] == "/align"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/align/runs", "/align/.cache", "/dev/shm"} <= mounts
    claims = {v["name"]: v.get("persistentVolumeClaim") for v in pod["volumes"]}
    assert claims["runs"] == {"claimName": "align-runs"}
    assert "{{" not in json.dumps(job["job_manifest"])  # every placeholder filled
