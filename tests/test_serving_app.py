"""The serving app and hot swap without any model: a toy service the app has never heard of
(a user -> ranked pins service, the shape the CTR system will plug in with) served by a real
uvicorn on a free 127.0.0.1 port in this process. Seconds, no pipeline run."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass

import pytest
import uvicorn

from mmpipe.serving.app import create_app
from mmpipe.serving.live import LiveService, Poller
from mmpipe.serving.media import MediaStore
from mmpipe.serving.service import COUNT, ID, NotReady, Operation, Param, ServingPaths, UnknownId
from tests.servers import HOST, free_port

USERS = {"u1": ["p3", "p1", "p2"], "u2": ["p2"]}


@dataclass
class Ranker:
    version: str
    scores: dict


class ToyRanker:
    """What a system declares to be served: nothing of it is known to the app."""

    name = "toy"
    registered_model = "toy_ranker"

    def __init__(self):
        self.target: str | None = None
        self.loads: list[str] = []
        self.operations = (Operation("rank", "user_to_pins", "a user's pins, best first",
                                     (Param("user", ID, "a user id"), Param("k", COUNT, "pins", default=2)),
                                     self.rank),)

    def target_version(self) -> str | None:
        return self.target

    def load(self, version: str) -> Ranker:
        self.loads.append(version)
        if version == "broken":
            raise NotReady("its index is not built yet")
        return Ranker(version, {user: [(pin, 1.0 / (rank + 1)) for rank, pin in enumerate(pins)]
                                for user, pins in USERS.items()})

    @staticmethod
    def rank(served: Ranker, user: str, k: int) -> dict:
        if user not in served.scores:
            raise UnknownId(f"unknown user {user!r}")
        return {"user": user, "results": [{"pin_id": pin, "score": score} for pin, score in served.scores[user][:k]]}


def get(port: int, path: str, params: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request("GET", path + (f"?{urllib.parse.urlencode(params)}" if params else ""))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture
def served(tmp_path):
    service = ToyRanker()
    live = LiveService(service)
    app = create_app([live], MediaStore(ServingPaths(tmp_path / "storage", tmp_path / "raw")), poll_s=None)
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield service, live, server.config.port
    server.should_exit = True
    thread.join(timeout=10)


def test_a_service_the_app_never_named_gets_its_route_and_version(served):
    service, live, port = served
    assert live.refresh() is False  # nothing registered yet
    assert get(port, "/api/toy/rank", {"user": "u1"}) == (
        503, {"error": "toy has no model loaded: no registered version of 'toy_ranker' to serve yet"})
    assert get(port, "/health")[1]["ready"] is False
    service.target = "1"
    assert live.refresh() is True
    status, body = get(port, "/api/toy/rank", {"user": "u1", "k": 2})
    assert status == 200
    assert body == {"service": "toy", "operation": "rank", "model": {"name": "toy_ranker", "version": "1"},
                    "user": "u1", "results": [{"pin_id": "p3", "score": 1.0}, {"pin_id": "p1", "score": 0.5}]}
    assert get(port, "/api/toy/rank", {"user": "u9"}) == (404, {"error": "unknown user 'u9'"})
    assert get(port, "/api/toy/rank", {"user": "u1", "k": "0"})[0] == 422
    _, described = get(port, "/api/services")
    assert described["services"]["toy"]["operations"][0]["kind"] == "user_to_pins"


def test_a_version_that_cannot_load_leaves_the_last_one_serving(served):
    service, live, port = served
    service.target = "1"
    live.refresh()
    service.target = "broken"
    assert live.refresh() is False
    assert get(port, "/api/toy/rank", {"user": "u2"})[1]["model"]["version"] == "1"
    health = get(port, "/health")[1]["services"]["toy"]
    assert health["version"] == "1" and health["target_version"] == "broken"
    assert health["error"] == "cannot load toy_ranker version broken: its index is not built yet"
    service.target = "2"
    assert live.refresh() is True and live.refresh() is False  # loaded once, then nothing to do
    assert service.loads == ["1", "broken", "2"]
    assert get(port, "/health")[1]["services"]["toy"]["error"] is None
    assert get(port, "/api/toy/rank", {"user": "u2"})[1]["model"]["version"] == "2"


def test_the_poller_swaps_in_a_new_target_by_itself(served):
    service, live, port = served
    service.target = "1"
    poller = Poller([live], interval_s=0.05)
    poller.start()
    try:
        deadline = time.monotonic() + 10
        while get(port, "/health")[1]["services"]["toy"]["version"] != "1":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        service.target = "7"
        while get(port, "/api/toy/rank", {"user": "u1"})[1]["model"]["version"] != "7":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        poller.stop()
    assert service.loads == ["1", "7"]
