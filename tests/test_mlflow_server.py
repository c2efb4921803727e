"""The registry against a real ``mlflow server``, and the champion served by ``mlflow models serve``.

Both servers are real subprocesses bound to 127.0.0.1 on free ports, with everything
they write in a temp dir: the tracking server uses a SQLite backend and a local artifact
root. A tiny PinCLIP is logged, registered and promoted through the project's own helpers
with ``MLFLOW_TRACKING_URI`` pointing at the server; runs, versions and aliases are then
read back through ``MlflowClient``, and the served champion must embed exactly as the
model loaded in-process.
"""

from __future__ import annotations

import json
import os
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.models import convert_input_example_to_serving_input

from mmpipe.systems.pinclip.model import PinCLIP
from mmpipe.nn.text_tower import load_text_encoder
from mmpipe.registry.mlflow_registry import RunContext, start_run
from mmpipe.systems.pinclip.eval import PRIMARY_METRIC
from mmpipe.systems.pinclip.serve import load_embedder, log_pinclip, make_pyfunc_input
from mmpipe.registry.promotion import FIRST, record_eval_metric, promote_if_better
from tests.servers import HOST, VENV_BIN, free_port, start, stop, wait_until_up
from tests.test_pinclip_registry import (  # noqa: F401  text_tower_dir is a fixture
    MODEL,
    TEXT_MAX_LENGTH,
    noise_image,
    text_tower_dir,
)


pytestmark = pytest.mark.slow

MLFLOW = VENV_BIN / "mlflow"
CONTEXT = RunContext(data_version="data-server-1", orchestrator_run_id="dagster-run-7",
                     asset_key="pinclip_model")
EXPERIMENT = "pinclip-server-test"


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = root / "server.log"
    # MLflow 3 also starts a job runner with seven huey consumers (GenAI jobs); the
    # registry needs none, and on two cores they double the start-up time.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = start([str(MLFLOW), "server", "--host", HOST, "--port", str(port), "--workers", "1",
                     "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                     "--default-artifact-root", str(root / "artifacts")], log, env)
    try:
        uri = f"http://{HOST}:{port}"
        wait_until_up(f"{uri}/health", process, log)
        yield SimpleNamespace(uri=uri, root=root)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def promoted(tracking_server, text_tower_dir):
    """A tiny PinCLIP logged, registered and promoted through the server."""
    torch.manual_seed(0)
    model = PinCLIP(MODEL, load_text_encoder(text_tower_dir)[1]).eval()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
        env.delenv("MMPIPE_MLFLOW_ARTIFACTS", raising=False)
        with start_run(EXPERIMENT, "tiny", CONTEXT, params={"steps": 0}) as run:
            _, version = log_pinclip(model, text_tower_dir, CONTEXT, text_max_length=TEXT_MAX_LENGTH)
        client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
        record_eval_metric(client, "pinclip", version, PRIMARY_METRIC, 0.125)
        decision = promote_if_better(client, "pinclip", version, PRIMARY_METRIC, 0.125)
        embedder = load_embedder("models:/pinclip@champion")  # in-process, through the server
        yield SimpleNamespace(client=client, run_id=run.info.run_id, version=str(version),
                              decision=decision, embedder=embedder)


def test_runs_versions_and_aliases_are_on_the_server(tracking_server, promoted):
    client = promoted.client
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [promoted.run_id]
    run = runs[0]
    assert run.data.tags["data_version"] == "data-server-1"
    assert run.data.tags["dagster_run_id"] == "dagster-run-7"
    assert run.data.params["steps"] == "0"

    versions = client.search_model_versions("name='pinclip'")
    assert [str(v.version) for v in versions] == [promoted.version]
    assert versions[0].run_id == promoted.run_id
    assert client.get_registered_model("pinclip").aliases == {"challenger": promoted.version,
                                                              "champion": promoted.version}
    assert promoted.decision.promote and promoted.decision.outcome == FIRST

    tags = client.get_model_version("pinclip", promoted.version).tags
    assert float(tags["eval.nDCG_at_10/validation"]) == 0.125
    assert tags["promotion.outcome"] == FIRST and tags["promotion.promoted"] == "true"
    # The server, not the client, chose where the artifacts live: its --default-artifact-root.
    assert list((tracking_server.root / "artifacts").rglob("MLmodel"))


def test_served_champion_answers_embedding_requests_like_the_model_in_process(tracking_server, promoted):
    port = free_port()
    log = tracking_server.root / "serve.log"
    # `mlflow models serve` execs `uvicorn` by name: the venv's bin must be on PATH even
    # when the tests run as .venv/bin/python without an activated venv.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server.uri,
           "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = start([str(MLFLOW), "models", "serve", "-m", "models:/pinclip@champion",
                     "--env-manager", "local", "--host", HOST, "-p", str(port), "-w", "1"], log, env)
    try:
        url = f"http://{HOST}:{port}"
        wait_until_up(f"{url}/ping", process, log)
        texts = ["crimson striped disc", None, "azure star"]
        images = [None, noise_image(11), noise_image(12, fmt="PNG")]
        body = convert_input_example_to_serving_input(make_pyfunc_input(texts, images))
        assert "dataframe_split" in json.loads(body)
        request = urllib.request.Request(f"{url}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            predictions = json.loads(response.read())["predictions"]
    finally:
        stop(process)

    assert [row["kind"] for row in predictions] == ["text", "image", "fused"]
    served = np.array([row["embedding"] for row in predictions], dtype=np.float32)
    expected, kinds = promoted.embedder.embed(texts, images)
    assert kinds == ["text", "image", "fused"]
    assert served.shape == (3, MODEL.embed_dim)
    np.testing.assert_allclose(served, expected, atol=1e-5)
