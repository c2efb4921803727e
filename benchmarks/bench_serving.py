"""Warm serving: text -> pins latency and throughput over HTTP against `mmpipe serve`.

    .venv/bin/python benchmarks/bench_serving.py --project .             # what `make run` left here
    .venv/bin/python benchmarks/bench_serving.py --project /tmp/proj     # bench_incremental's --workdir

``--project`` is a materialized project: ``storage/`` (registered versions' indexes and
tables), ``data/raw`` and ``mlflow.db`` (or ``MLFLOW_TRACKING_URI``). The benchmark

1. starts `mmpipe serve` over it on a free 127.0.0.1 port (a subprocess, as a user runs
   it) and waits until every service has loaded;
2. 1 client: ``--requests`` text -> pins queries one after another on one keep-alive
   connection (distinct queries, ``k`` 10): p50, p99 and requests/s;
3. 8 clients: the same number of queries from 8 threads at once, each on its own
   connection: p50, p99 and requests/s;
4. the same queries in this process through the same service code without HTTP (the
   floor the server's overhead is measured against);
5. one `mmpipe search --text` call (a fresh process that loads the model per query: what
   a user had before), against which the warm p50 is the speedup.

Everything is loopback and bounded (a fixed number of requests). Aim at the small scale on
2 cores: p50 < 30 ms and p99 < 150 ms at 1 client.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from figures import Figure  # noqa: E402  (after the checkout is on the path)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BENCHMARK = "serving"
HOST = "127.0.0.1"
CLIENTS = 8
K = 10
STARTUP_TIMEOUT_S = 300

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "pink"]
PATTERNS = ["striped", "dotted", "plain", "checked", "ringed"]
SHAPES = ["star", "circle", "square", "triangle", "heart", "cross"]


def queries(n: int) -> list[str]:
    """``n`` distinct short queries (no answer can be a cache hit)."""
    words = itertools.cycle(itertools.product(COLOURS, PATTERNS, SHAPES))
    return [f"a {colour} {pattern} {shape} {i}" for i, (colour, pattern, shape) in zip(range(n), words)]


def percentile(values_ms: list[float], q: float) -> float:
    ordered = sorted(values_ms)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tracking_uri(project: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project / 'mlflow.db'}"


def start_server(project: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(project), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "mmpipe.cli", "serve", "--port", str(port), "--storage",
               str(project / "storage"), "--raw", str(project / "data" / "raw"), "--systems", "pinclip",
               "--poll-seconds", "0"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mmpipe serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=2)
            connection.request("GET", "/health")
            health = json.loads(connection.getresponse().read())
            connection.close()
            if health["ready"]:
                return process
            raise RuntimeError(f"mmpipe serve has nothing to serve: {health}")
        except (ConnectionError, OSError):
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"mmpipe serve not up after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def client_run(port: int, texts: list[str], latencies_ms: list[float], errors: list[str]) -> None:
    """One client: ``texts`` one after another on one keep-alive connection."""
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    for text in texts:
        path = f"/api/pinclip/text?{urllib.parse.urlencode({'q': text, 'k': K})}"
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        latencies_ms.append((time.perf_counter() - started) * 1000)
        if response.status != 200 or len(json.loads(body)["results"]) != K:
            errors.append(f"{response.status}: {body[:200]!r}")
    connection.close()


def load(port: int, texts: list[str], clients: int) -> dict[str, float]:
    """p50 / p99 (ms) and requests/s of ``texts`` split over ``clients`` concurrent clients."""
    shares = [texts[i::clients] for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    threads = [threading.Thread(target=client_run, args=(port, share, out, errors))
               for share, out in zip(shares, latencies)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    every = [value for part in latencies for value in part]
    return {"p50": percentile(every, 50), "p99": percentile(every, 99), "rps": len(every) / wall}


def in_process(project: Path, texts: list[str], warmup: list[str]) -> dict[str, float]:
    """The same queries through the same service code, in this process, without HTTP
    (after the same warm-up queries as the server's)."""
    import torch

    from mmpipe.serving.service import ServingPaths
    from mmpipe.systems.pinclip.serve import PinService

    torch.set_num_threads(1)  # as `mmpipe serve` runs its forwards
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(project)
    service = PinService(ServingPaths(project / "storage", project / "data" / "raw"))
    served = service.load(service.target_version())
    operation = next(op for op in service.operations if op.kind == "text_to_pins")
    for text in warmup:
        operation.run(served, q=text, k=K)
    latencies = []
    for text in texts:
        started = time.perf_counter()
        operation.run(served, q=text, k=K)
        latencies.append((time.perf_counter() - started) * 1000)
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)}


def cold_search_ms(project: Path) -> float:
    """Wall time of one `mmpipe search --text` (process start, model load, one query)."""
    storage = project / "storage"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(project), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mmpipe.cli", "search", "--text", "a blue striped star", "--k", str(K),
                    "--index", str(storage / "index" / "pins"), "--pins", str(storage / "validated" / "pins"),
                    "--embeddings", str(storage / "embeddings" / "pins")],
                   env=env, check=True, capture_output=True)
    return (time.perf_counter() - started) * 1000


def run(project: str | Path, requests: int = 400, warmup: int = 20) -> list[Figure]:
    project = Path(project).resolve()
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"bench_serving_{port}.log"  # the server's output, for a failure
    texts = queries(warmup + requests)
    process = start_server(project, port, log)
    try:
        load(port, texts[:warmup], 1)  # first requests pay for lazy imports and allocations
        one = load(port, texts[warmup:], 1)
        many = load(port, texts[warmup:], CLIENTS)
    finally:
        stop_server(process)
    local = in_process(project, texts[warmup:], texts[:warmup])
    cold = cold_search_ms(project)
    print(f"text -> pins over HTTP ({requests} queries, k {K}) on {project}")
    print(f"  1 client : p50 {one['p50']:7.2f} ms  p99 {one['p99']:7.2f} ms  {one['rps']:7.1f} req/s")
    print(f"  {CLIENTS} clients: p50 {many['p50']:7.2f} ms  p99 {many['p99']:7.2f} ms  {many['rps']:7.1f} req/s")
    print(f"  in process, no HTTP: p50 {local['p50']:7.2f} ms  p99 {local['p99']:7.2f} ms")
    print(f"  one `mmpipe search --text` call: {cold:8.0f} ms")
    note = f"{requests} distinct queries, k {K}, loopback"
    return [
        Figure(BENCHMARK, "text->pins p50, 1 client", one["p50"], "ms", "same query in process (no HTTP) p50",
               local["p50"], f"{note}; aim < 30 ms at small"),
        Figure(BENCHMARK, "text->pins p99, 1 client", one["p99"], "ms", "same query in process (no HTTP) p99",
               local["p99"], f"{note}; aim < 150 ms at small"),
        Figure(BENCHMARK, f"text->pins p50, {CLIENTS} clients", many["p50"], "ms", "p50 at 1 client", one["p50"], note),
        Figure(BENCHMARK, f"text->pins p99, {CLIENTS} clients", many["p99"], "ms", "p99 at 1 client", one["p99"], note),
        Figure(BENCHMARK, f"text->pins throughput, {CLIENTS} clients", many["rps"], "req/s", "throughput at 1 client",
               one["rps"], note),
        Figure(BENCHMARK, "text->pins p50, 1 client (warm server)", one["p50"], "ms",
               "one `mmpipe search --text` call (loads the model)", cold, "the server loads once; the CLI per call"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=ROOT, help="a materialized project (default: this checkout)")
    parser.add_argument("--requests", type=int, default=400, help="timed queries per load level (default: 400)")
    args = parser.parse_args(argv)
    run(args.project, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
