"""The Dagster web server against this project: asset graph over GraphQL, and a launched run.

`dagster-webserver` runs as a real subprocess on a free 127.0.0.1 port, with its own
DAGSTER_HOME and a throwaway project root (MMPIPE_ROOT) holding the tiny world, so the
launched run writes nothing into the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from orchestration.definitions import defs
from tests.conftest import PROJECT_ROOT
from tests.servers import HOST, free_port

STARTUP_TIMEOUT_S = 60
RUN_TIMEOUT_S = 120

ASSET_NODES_QUERY = """
query {
  assetNodes { assetKey { path } groupName dependencyKeys { path } }
}
"""

REPOSITORIES_QUERY = """
query {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } } }
    ... on PythonError { message }
  }
}
"""

LAUNCH_RUN_MUTATION = """
mutation($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
  }
}
"""

RUN_QUERY = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status assetSelection { path } }
    ... on RunNotFoundError { message }
  }
}
"""

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

# Without a daemon the default queued coordinator never dequeues a run: launch it directly.
DAGSTER_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
"""


class Server:
    """A running dagster-webserver and the GraphQL calls the tests make to it."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def get(self, path: str, timeout: float = 5) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(self.url + "/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.loads(response.read())
        assert "errors" not in payload, payload["errors"]
        return payload["data"]

    def wait_ready(self) -> tuple[str, str]:
        """Poll until the server answers and the code location is loaded: (location, repository)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"webserver exited:\n{self.log_tail()}"
            try:
                info = json.loads(self.get("/server_info"))
                repos = self.graphql(REPOSITORIES_QUERY)["repositoriesOrError"]
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
                continue
            if repos["__typename"] == "RepositoryConnection" and repos["nodes"]:
                assert "dagster_webserver_version" in info
                node = repos["nodes"][0]
                return node["location"]["name"], node["name"]
            time.sleep(0.5)
        raise AssertionError(f"webserver not ready in {STARTUP_TIMEOUT_S}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            # Its own session: the code server it spawned goes down with it.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def make_project_root(root: Path, tiny_world: Path) -> Path:
    """A project root with the tiny world as data/raw and the project's own params: the
    default quarantine policy must pass the tiny world (a one-sided binomial test, so a table
    of a few rows is not failed on one planted bad record)."""
    (root / "data").mkdir(parents=True)
    shutil.copytree(tiny_world, root / "data" / "raw")
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    return root


@pytest.fixture(scope="module")
def server(tiny_world, tmp_path_factory):
    base = tmp_path_factory.mktemp("webserver")
    root = make_project_root(base / "project", tiny_world)
    home = base / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    env = {**os.environ, "MMPIPE_ROOT": str(root), "DAGSTER_HOME": str(home),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    port = free_port()
    log = base / "webserver.log"
    webserver = Path(sys.executable).parent / "dagster-webserver"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(webserver), "-h", HOST, "-p", str(port), "-m", "orchestration.definitions"],
            cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    running = Server(process, f"http://{HOST}:{port}", log)
    try:
        location, repository = running.wait_ready()
        yield running, location, repository, root, home
    finally:
        running.stop()


def _asset_nodes(server: Server) -> dict[str, dict]:
    nodes = server.graphql(ASSET_NODES_QUERY)["assetNodes"]
    return {"/".join(node["assetKey"]["path"]): node for node in nodes}


def test_asset_graph_over_graphql(server):
    running, location, repository, _, _ = server
    assert (location, repository) == ("orchestration.definitions", "__repository__")
    nodes = _asset_nodes(running)

    expected = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert set(nodes) == expected
    groups = {key: node["groupName"] for key, node in nodes.items()}
    assert groups["raw_pins"] == "raw" and groups["validated_pins"] == "validation"
    assert groups["graph_neighbor_pairs"] == "graph" and groups["eval_overview"] == "eval"

    def parents(key: str) -> set[str]:
        return {"/".join(dep["path"]) for dep in nodes[key]["dependencyKeys"]}

    assert parents("validated_pins") == {"raw_pins"}
    assert parents("validated_board_pins") == {"raw_board_pins", "validated_pins", "validated_boards"}
    assert parents("raw_pins") == set()
    assert "eval_pinclip" in parents("eval_overview")


def _launch(server: Server, location: str, repository: str, assets: list[str]) -> str:
    params = {"selector": {
        "repositoryLocationName": location, "repositoryName": repository, "jobName": "__ASSET_JOB",
        "assetSelection": [{"path": [asset]} for asset in assets],
    }}
    launched = server.graphql(LAUNCH_RUN_MUTATION, {"executionParams": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def _wait_for_run(server: Server, run_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = server.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        if run["status"] in FINISHED:
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} still {run['status']} after {RUN_TIMEOUT_S}s:\n"
                         f"{server.log_tail()}")


def test_launch_a_materialization_through_graphql(server):
    """An unpartitioned slice (boards are a dimension table; pins are partitioned by day)."""
    running, location, repository, root, home = server
    run_id = _launch(running, location, repository, ["raw_boards", "validated_boards"])
    run = _wait_for_run(running, run_id)
    assert run["status"] == "SUCCESS", running.log_tail()
    assert sorted("/".join(key["path"]) for key in run["assetSelection"]) == ["raw_boards", "validated_boards"]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        for key in ("raw_boards", "validated_boards"):
            event = instance.get_latest_materialization_event(dg.AssetKey(key))
            assert event is not None and event.run_id == run_id, key
        assert instance.get_latest_materialization_event(dg.AssetKey("validated_users")) is None
        rate = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey("validated_boards"), "quarantine_rate"))
        assert rate is not None and rate.run_id == run_id
        assert rate.event.asset_check_evaluation.passed
        assert rate.event.asset_check_evaluation.metadata["threshold"].value == \
            yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["validation"]["max_quarantine_rate"]
        metadata = instance.get_latest_materialization_event(
            dg.AssetKey("validated_boards")).asset_materialization.metadata
    raw = pd.read_parquet(root / "data" / "raw" / "boards.parquet")
    valid = pd.read_parquet(root / "storage" / "validated" / "boards.parquet")  # under MMPIPE_ROOT
    assert metadata["rows_in"].value == len(raw)
    assert metadata["rows_valid"].value == len(valid) > 0
