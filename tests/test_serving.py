"""`mmpipe serve` on the tiny pipeline run: answers, bad requests, media, the explorer page in
a real browser, and a champion swapped in while requests keep coming.

One server for the module: a real `mmpipe serve` subprocess on a free 127.0.0.1 port over a
copy of the session's materialized storage (`materialized` in conftest.py: the registered
champions, indexes, features and validated tables `make run` leaves) and the tiny world's
raw root. The browser tests drive Debian's chromium through Playwright (`executable_path`;
nothing is downloaded); their screenshots go to the test's tmp dir and, when
MMPIPE_SCREENSHOTS is set, to that folder too. The hot-swap test moves the registry and
rebuilds the pin index under the server, so it runs last.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from mmpipe.eval.summarization import LengthBudget
from mmpipe.index.incremental import read_state, sync_pin_index
from mmpipe.io import write_parquet_atomic
from mmpipe.layout import truth_path
from mmpipe.media.features import concept_phrase
from mmpipe.partitions import read_days
from mmpipe.serving.media import MediaStore
from mmpipe.serving.service import MAX_COUNT, MAX_TEXT_CHARS, ServingPaths, UnknownId
from tests.conftest import PROJECT_ROOT
from tests.servers import HOST, free_port, log_tail, require_executable, start, stop, wait_until_up

SYSTEMS = {"pinclip", "mac", "moment", "chan", "ctr"}
POLL_S = 0.5


def get(server, path: str, params: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET on the server."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    connection = http.client.HTTPConnection(HOST, server.port, timeout=60)
    try:
        connection.request("GET", path + query)
        response = connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if response.getheader("content-type", "").startswith(
            "application/json") else {"bytes": body, "type": response.getheader("content-type")}
    finally:
        connection.close()


@pytest.fixture(scope="module")
def server(materialized, tiny_world, tmp_path_factory):
    _, storage, _ = materialized
    root = tmp_path_factory.mktemp("serving")
    copy = root / "storage"
    shutil.copytree(storage, copy)  # the hot-swap test changes the registry and the pin index
    port, log = free_port(), root / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{copy / 'mlflow.db'}", "MMPIPE_SCALE": "tiny",
           "PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = start([sys.executable, "-m", "mmpipe.cli", "serve", "--port", str(port), "--storage", str(copy),
                     "--raw", str(tiny_world), "--poll-seconds", str(POLL_S)], log, env=env, cwd=root)
    try:
        wait_until_up(f"http://{HOST}:{port}/health", process, log, timeout_s=180)
        yield SimpleNamespace(port=port, storage=copy, raw=tiny_world, log=log, process=process,
                              registry=MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"],
                                                    registry_uri=env["MLFLOW_TRACKING_URI"]))
    finally:
        stop(process)


@pytest.fixture(scope="module")
def samples(server):
    """Ids and queries the tiny world holds: a pin, a moment query with its true windows
    and a summarization query, each of a video the server has features of."""
    pins = read_days(server.storage / "validated" / "pins")
    moment_queries = pd.read_parquet(server.storage / "validated" / "moment_queries.parquet")
    truth = pd.read_parquet(truth_path(server.raw, "moments"))
    moment = None
    for row in moment_queries.itertuples():
        status, _ = get(server, "/api/moment/moments", {"video": row.video_id, "q": row.query, "k": 1})
        if status == 200:
            moment = row
            break
    assert moment is not None, "no moment query of a video with frame features"
    windows = truth[truth["query_id"] == moment.query_id][["start_s", "end_s"]].to_numpy().tolist()
    summaries = pd.read_parquet(server.storage / "validated" / "summary_queries.parquet")
    summary = next(row for row in summaries.itertuples()
                   if get(server, "/api/chan/summary", {"video": row.video_id, "q": "red"})[0] == 200)
    return SimpleNamespace(pin=str(pins["pin_id"].iloc[0]), pins=pins, moment=moment, truth=sorted(windows),
                           summary_video=summary.video_id, summary_query=concept_phrase(summary.concepts))


def champion(server, name: str) -> str:
    return str(server.registry.get_model_version_by_alias(name, "champion").version)


def serving_version(server, name: str) -> str:
    """The version a service serves: the champion, else the challenger (the tiny run's
    smoke-trained CTR model need not pass its gate)."""
    aliases = server.registry.get_registered_model(name).aliases
    return str(aliases.get("champion", aliases.get("challenger")))


# ---------------------------------------------------------------------------------------
# answers


def test_every_system_is_served_by_its_registered_version(server):
    status, health = get(server, "/health")
    assert status == 200 and health["ready"] is True
    assert set(health["services"]) == SYSTEMS
    for name, entry in health["services"].items():
        assert entry["version"] == serving_version(server, name) and entry["error"] is None, name
    # the index-backed services serve the version their index was built by
    assert read_state(server.storage / "index" / "pins")["model_version"] == health["services"]["pinclip"]["version"]
    _, described = get(server, "/api/services")
    kinds = {op["kind"] for entry in described["services"].values() for op in entry["operations"]}
    assert kinds == {"text_to_pins", "pin_to_pins", "text_to_videos", "moments", "summary", "user_to_pins",
                     "example_users"}


def test_text_to_pins_matches_the_in_process_search_and_names_its_version(server):
    from mmpipe.systems.pinclip.serve import PinSearcher, version_uri

    status, answer = get(server, "/api/pinclip/text", {"q": "a blue striped star", "k": 7})
    assert status == 200
    version = champion(server, "pinclip")
    assert answer["model"] == {"name": "pinclip", "version": version}
    searcher = PinSearcher(version_uri(version), index_dir=server.storage / "index" / "pins",
                           pins_table_path=server.storage / "validated" / "pins",
                           embeddings=server.storage / "embeddings" / "pins")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{server.storage / 'mlflow.db'}")
        expected = searcher.search_text("a blue striped star", 7)
    assert [pin["pin_id"] for pin in answer["results"]] == expected["pin_id"].tolist()
    assert [pin["score"] for pin in answer["results"]] == pytest.approx(expected["score"].tolist(), abs=1e-5)
    assert [pin["caption"] for pin in answer["results"]] == expected["caption"].tolist()


def test_similar_pins_leave_the_pin_out_and_carry_its_boards(server, samples):
    status, answer = get(server, "/api/pinclip/similar", {"pin": samples.pin, "k": 5})
    assert status == 200 and len(answer["results"]) == 5
    assert samples.pin not in [pin["pin_id"] for pin in answer["results"]]
    scores = [pin["score"] for pin in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    saves = pd.read_parquet(server.storage / "validated" / "board_pins.parquet")
    for pin in [answer["pin"], *answer["results"]]:
        expected = set(saves.loc[saves["pin_id"] == pin["pin_id"], "board_id"].astype(str))
        assert {board["board_id"] for board in pin["boards"]} == expected, pin["pin_id"]


def test_text_to_videos_names_the_best_second_inside_each_video(server):
    status, answer = get(server, "/api/mac/text", {"q": "a red star moves to the left", "k": 4})
    assert status == 200 and answer["model"]["version"] == champion(server, "mac")
    assert len(answer["results"]) == 4
    for video in answer["results"]:
        assert 0 <= video["best_s"] <= video["duration_s"], video


def test_moments_lie_inside_the_video_and_come_with_the_true_windows(server, samples):
    status, answer = get(server, "/api/moment/moments", {"video": samples.moment.video_id,
                                                         "q": samples.moment.query, "k": 3})
    assert status == 200 and answer["model"]["version"] == champion(server, "moment")
    np.testing.assert_allclose(answer["truth"], samples.truth)
    assert 1 <= len(answer["results"]) <= 3
    for span in answer["results"]:
        assert 0 <= span["start_s"] < span["end_s"] <= answer["duration_s"] + 1e-6, span


def test_summary_keeps_the_shots_of_the_models_budget(server, samples):
    status, answer = get(server, "/api/chan/summary", {"video": samples.summary_video, "q": samples.summary_query})
    assert status == 200 and answer["model"]["version"] == champion(server, "chan")
    shots = answer["results"]
    budget = LengthBudget.from_dict(answer["budget"])
    kept = [shot for shot in shots if shot["selected"]]
    if budget.shots_share is not None:
        assert len(kept) == budget.max_shots(len(shots))
    # the budget keeps the best-scored shots
    assert min(shot["score"] for shot in kept) >= max([s["score"] for s in shots if not s["selected"]], default=0)


def test_user_to_pins_ranks_the_item_table_by_the_pipelines_ctr_version(server):
    """The pipeline's CTR version through `mmpipe serve` (the ranking's details, against the
    pyfunc and the tables, are tests/test_serving_ctr.py's)."""
    _, offered = get(server, "/api/ctr/users", {"k": 3})
    user = offered["users"][0]["user_id"]
    status, answer = get(server, "/api/ctr/rank", {"user": user, "k": 6})
    assert status == 200 and answer["model"]["version"] == serving_version(server, "ctr")
    p = [pin["p_click"] for pin in answer["results"]]
    assert len(p) == 6 and p == sorted(p, reverse=True) and all(0 < value < 1 for value in p)
    assert not {pin["pin_id"] for pin in answer["results"]} & set(answer["user"]["history"])


def test_concurrent_requests_get_the_answers_of_sequential_ones(server):
    """Eight clients at once, texts of different lengths: the forwards run in parallel, and
    each answer is the one the query gets alone (a tokenizer shared without its lock mixes
    the lengths of concurrent texts)."""
    texts = [f"a {colour} {'very ' * n}striped star" for n, colour in enumerate(["red", "blue", "green", "pink"] * 4)]
    alone = {text: get(server, "/api/pinclip/text", {"q": text, "k": 5})[1]["results"] for text in texts}
    together: dict[str, list] = {}

    def ask(share: list[str]) -> None:
        for text in share:
            together[text] = get(server, "/api/pinclip/text", {"q": text, "k": 5})[1]["results"]

    threads = [threading.Thread(target=ask, args=(texts[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone


def test_the_text_tower_encodes_from_many_threads_at_once():
    """What lets the server run forwards in parallel: one tokenizer shared by 8 threads, texts
    and length caps of every size, each result the one a single thread gets."""
    import torch

    from mmpipe.nn.text_tower import encode_texts, load_text_encoder

    tokenizer, model = load_text_encoder(None)
    jobs = [([f"a blue striped star {i} {j}", "x " * (j % 40)], 8 + j % 24) for i in range(8) for j in range(20)]
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server runs them: 8 threads of 2 would crowd 2 cores
    alone = [encode_texts(texts, tokenizer, model, max_length=cap).pooled for texts, cap in jobs]
    together: dict[int, torch.Tensor | str] = {}

    def encode(rows: range) -> None:
        for row in rows:
            texts, cap = jobs[row]
            try:
                together[row] = encode_texts(texts, tokenizer, model, max_length=cap).pooled
            except Exception as err:  # what an unguarded tokenizer raises
                together[row] = repr(err)

    threads = [threading.Thread(target=encode, args=(range(i, len(jobs), 8),)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        torch.set_num_threads(threads_before)
    wrong = [row for row, expected in enumerate(alone) if isinstance(together[row], str)
             or not torch.allclose(together[row], expected, atol=1e-5)]
    assert not wrong, [together[row] for row in wrong[:3]]


# ---------------------------------------------------------------------------------------
# bad requests: a 4xx naming what is wrong, never a 500


@pytest.mark.parametrize(("path", "params", "status", "message"), [
    ("/api/pinclip/text", {"q": ""}, 422, "q is empty"),
    ("/api/pinclip/text", {"q": "   "}, 422, "q is empty"),
    ("/api/pinclip/text", {"q": "star " * 2000}, 422, f"at most {MAX_TEXT_CHARS} are accepted"),
    ("/api/pinclip/text", {"q": "a\x00star"}, 422, "control character"),
    ("/api/pinclip/text", {"q": "star", "k": "0"}, 422, f"k must be between 1 and {MAX_COUNT}, got 0"),
    ("/api/pinclip/text", {"q": "star", "k": "-3"}, 422, "k must be between 1"),
    ("/api/pinclip/text", {"q": "star", "k": "1000000"}, 422, "got 1000000"),
    ("/api/pinclip/text", {"q": "star", "k": "ten"}, 422, "k must be a whole number"),
    ("/api/pinclip/text", {}, 422, "missing parameter 'q'"),
    ("/api/pinclip/text", {"q": "star", "limit": "3"}, 422, "unexpected parameters ['limit']"),
    ("/api/pinclip/similar", {"pin": "p999999"}, 404, "unknown pin 'p999999'"),
    ("/api/pinclip/similar", {"pin": "p" * 500}, 422, "at most 200"),
    ("/api/mac/text", {"q": "", "k": "2"}, 422, "q is empty"),
    ("/api/moment/moments", {"video": "v9999", "q": "a red star"}, 404, "unknown video 'v9999'"),
    ("/api/moment/moments", {"video": "v0001", "q": "x" * 10_000}, 422, "10000 characters long"),
    ("/api/chan/summary", {"video": "v9999", "q": "red"}, 404, "unknown video 'v9999'"),
    ("/api/chan/summary", {"video": "v0001"}, 422, "missing parameter 'q'"),
    ("/api/ctr/rank", {"user": "u_nobody"}, 404, "unknown user 'u_nobody'"),
    ("/api/ctr/rank", {"user": "u0001", "k": "0"}, 422, "k must be between 1"),
    ("/api/nothing/here", {}, 404, "Not Found"),
    ("/media/pin/p999999", {}, 404, "unknown pin 'p999999'"),
    ("/media/pin/..%2F..%2Fetc%2Fpasswd", {}, 404, ""),
    ("/media/frame/v9999", {"t": "1"}, 404, "unknown video 'v9999'"),
    ("/media/frame/v0001", {"t": "-1"}, 422, "t must be a time in seconds"),
    ("/media/frame/v0001", {"t": "nan"}, 422, "t must be a time in seconds"),
], ids=["empty", "blank", "10k-chars", "control-char", "k-zero", "k-negative", "k-huge", "k-not-a-number",
        "missing", "unexpected", "unknown-pin", "overlong-id", "video-search-empty", "unknown-video-moments",
        "moment-10k-chars", "unknown-video-summary", "summary-missing-query", "unknown-user", "rank-k-zero", "unknown-route", "unknown-pin-image",
        "pin-image-traversal", "unknown-video-frame", "negative-time", "nan-time"])
def test_bad_request_gets_a_4xx_with_a_clear_message(server, path, params, status, message):
    got, body = get(server, path, params)
    assert got == status, body
    assert message in body["error"]


def test_media_come_from_the_validated_data(server, samples):
    row = samples.pins.iloc[0]
    status, image = get(server, f"/media/pin/{row['pin_id']}")
    assert status == 200 and image["type"] == "image/jpeg"
    assert image["bytes"] == (server.raw / row["image_path"]).read_bytes()
    status, frame = get(server, f"/media/frame/{samples.moment.video_id}", {"t": "1.0"})
    assert status == 200 and frame["type"] == "image/jpeg"
    from io import BytesIO

    decoded = np.asarray(Image.open(BytesIO(frame["bytes"])))
    assert decoded.ndim == 3 and decoded.shape[0] == decoded.shape[1] > 0


def test_media_store_refuses_image_paths_that_leave_the_raw_root(tmp_path):
    raw, storage = tmp_path / "raw", tmp_path / "storage"
    (raw / "images").mkdir(parents=True)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"not yours")
    (raw / "images" / "link.jpg").symlink_to(outside)
    (raw / "images" / "ok.jpg").write_bytes(b"\xff\xd8 a jpeg")
    pins = pd.DataFrame({"pin_id": ["ok", "climbs", "absolute", "linked"],
                         "image_path": ["images/ok.jpg", "../secret.jpg", str(outside), "images/link.jpg"]})
    write_parquet_atomic(pins, storage / "validated" / "pins" / "2026-01-01.parquet")
    media = MediaStore(ServingPaths(storage, raw))
    assert media.pin_image("ok") == (b"\xff\xd8 a jpeg", "image/jpeg")
    for pin_id, reason in [("climbs", "contains '..'"), ("absolute", "absolute"), ("linked", "symbolic link")]:
        with pytest.raises(UnknownId, match=reason):
            media.pin_image(pin_id)


# ---------------------------------------------------------------------------------------
# the explorer page in headless Chromium


@contextlib.contextmanager
def explorer_page(port: int, shots: Path):
    """The explorer page of the server on ``port``, loaded in headless Chromium (``tab``);
    ``shots``: where :func:`screenshot` saves."""
    chromium = require_executable("chromium", install_hint="apt-get install chromium (Debian's package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1100, "height": 900})
            tab.goto(f"http://{HOST}:{port}/")
            tab.wait_for_selector("body[data-ready=true]")
            yield SimpleNamespace(tab=tab, shots=shots)
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with explorer_page(server.port, tmp_path_factory.mktemp("screenshots")) as opened:
        yield opened


def screenshot(page, panel: str) -> Path:
    """The panel's screenshot in the test's tmp dir, and in $MMPIPE_SCREENSHOTS when set."""
    path = page.shots / f"{panel}.png"
    page.tab.locator(f"#{panel}-panel").screenshot(path=str(path))
    if os.environ.get("MMPIPE_SCREENSHOTS"):
        target = Path(os.environ["MMPIPE_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    assert path.stat().st_size > 0
    return path


def loaded_images(tab, selector: str) -> list[int]:
    """naturalWidth of every image under ``selector``, once each has finished loading."""
    tab.wait_for_function("s => [...document.querySelectorAll(s)].every(i => i.complete)", arg=f"{selector} img")
    return tab.eval_on_selector_all(f"{selector} img", "images => images.map(i => i.naturalWidth)")


def submit(tab, panel: str, **fields) -> None:
    """Fill a panel's form (``#<panel>-<field>``) and send it."""
    for field, value in fields.items():
        tab.fill(f"#{panel}-{field}", str(value))
    tab.click(f"#{panel}-form button")


def test_pin_search_shows_thumbnails_that_load(page, server):
    tab = page.tab
    submit(tab, "pins", q="a blue striped star", k=8)
    tab.wait_for_selector("#pins-results .pin")
    widths = loaded_images(tab, "#pins-results")
    assert len(widths) == 8 and all(width > 0 for width in widths)
    assert tab.inner_text("[data-testid=pins-version]") == f"pinclip v{champion(server, 'pinclip')}"
    screenshot(page, "pins")


def test_clicking_a_pin_shows_its_neighbours_and_boards(page):
    tab = page.tab
    first = tab.locator("#pins-results .pin").first
    clicked = first.get_attribute("data-pin-id")
    first.click()
    tab.wait_for_selector(f"[data-testid=similar-query] img[alt='{clicked}']")
    tab.wait_for_selector("#similar-results .pin")
    neighbours = tab.eval_on_selector_all("#similar-results .pin", "pins => pins.map(p => p.dataset.pinId)")
    assert neighbours and clicked not in neighbours
    assert all(width > 0 for width in loaded_images(tab, "#similar-results"))
    assert "boards" in tab.inner_text("[data-testid=similar-query]")
    screenshot(page, "similar")


def test_video_search_shows_keyframe_strips(page, server):
    tab = page.tab
    submit(tab, "videos", q="a small cross sinks", k=3)
    tab.wait_for_selector("#videos-results .video")
    assert tab.locator("#videos-results .video").count() == 3
    widths = loaded_images(tab, "#videos-results")
    assert len(widths) == 3 * 8 and all(width > 0 for width in widths)
    assert tab.locator("#videos-results .frame.best").count() == 3  # each video's best second outlined
    assert tab.inner_text("[data-testid=videos-version]") == f"mac v{champion(server, 'mac')}"
    screenshot(page, "videos")


def test_moment_timeline_renders_against_the_true_window(page, samples):
    tab = page.tab
    submit(tab, "moments", video=samples.moment.video_id, q=samples.moment.query, k=3)
    tab.wait_for_selector("[data-testid=moment-timeline] .span")
    predicted = tab.locator("[data-testid=moment-timeline] .span")
    assert 1 <= predicted.count() <= 3
    assert tab.locator("[data-testid=truth-timeline] .span").count() == len(samples.truth)
    bar = tab.locator("[data-testid=truth-timeline]").bounding_box()
    truth_box = tab.locator("[data-testid=truth-timeline] .span").first.bounding_box()
    assert bar["x"] <= truth_box["x"] and truth_box["x"] + truth_box["width"] <= bar["x"] + bar["width"] + 1
    assert all(width > 0 for width in loaded_images(tab, "#moments-results"))
    assert tab.inner_text("[data-testid=moments-version]").startswith("moment v")
    screenshot(page, "moments")


def test_summary_shows_its_selected_shots(page, samples):
    tab = page.tab
    submit(tab, "summary", video=samples.summary_video, q=samples.summary_query)
    tab.wait_for_selector("[data-testid=summary-shots] .frame")
    shots = tab.locator("[data-testid=summary-shots] .frame")
    selected = tab.locator("[data-testid=summary-shots] .frame.selected")
    assert shots.count() >= 1 and 1 <= selected.count() <= shots.count()
    assert all(width > 0 for width in loaded_images(tab, "[data-testid=summary-shots]"))
    assert tab.inner_text("[data-testid=summary-version]").startswith("chan v")
    screenshot(page, "summary")


def test_a_bad_query_shows_the_servers_message(page):
    tab = page.tab
    submit(tab, "pins", q="a star", k=500)
    tab.wait_for_function("() => document.querySelector('[data-testid=pins-error]').textContent.length > 0")
    assert f"k must be between 1 and {MAX_COUNT}, got 500" in tab.inner_text("[data-testid=pins-error]")
    tab.fill("#pins-k", "8")


# ---------------------------------------------------------------------------------------
# hot swap (last: it moves the registry and rebuilds the pin index under the server)


def _promote_copy(server, name: str) -> str:
    """A new registered version of ``name`` with the champion's artifacts, made champion
    (what a retrain that passes the gate does, with new weights)."""
    first = server.registry.get_model_version_by_alias(name, "champion")
    second = str(server.registry.create_model_version(name, first.source, run_id=first.run_id).version)
    server.registry.set_registered_model_alias(name, "champion", second)
    return second


def _reembed_pins(storage: Path, version: str) -> None:
    """What pin_embeddings and faiss_pin_index do for a new champion: every day's embeddings
    rewritten by it, then the index rebuilt (the version changed)."""
    for path in sorted((storage / "embeddings" / "pins").glob("*.parquet")):
        frame = pd.read_parquet(path)
        write_parquet_atomic(frame.assign(model_version=version), path)
    report = sync_pin_index(storage / "index" / "pins", storage / "embeddings" / "pins")
    assert report.mode == "rebuild" and report.model_version == version


def wait_for(condition, timeout_s: float = 90.0, what: str = ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_a_new_champion_is_swapped_in_without_a_failed_request(server, samples):
    answers: dict[str, list[tuple[int, str | None]]] = {"pinclip": [], "moment": []}
    stop_requests = threading.Event()
    requests = {"pinclip": ("/api/pinclip/text", {"q": "a blue striped star", "k": 5}),
                "moment": ("/api/moment/moments", {"video": samples.moment.video_id, "q": samples.moment.query})}

    def keep_asking(name: str) -> None:
        path, params = requests[name]
        while not stop_requests.is_set():
            status, body = get(server, path, params)
            answers[name].append((status, body.get("model", {}).get("version") if status == 200 else str(body)))

    before = {name: get(server, "/health")[1]["services"][name]["version"] for name in answers}
    workers = [threading.Thread(target=keep_asking, args=(name,)) for name in answers]
    for worker in workers:
        worker.start()
    try:
        new_pinclip = _promote_copy(server, "pinclip")
        new_moment = _promote_copy(server, "moment")
        # moment serves its champion: swapped within a poll and a load
        wait_for(lambda: get(server, "/health")[1]["services"]["moment"]["version"] == new_moment,
                 what=f"moment version {new_moment}")
        # pinclip serves the version its index holds: the alias alone does not move it
        time.sleep(3 * POLL_S)
        assert get(server, "/health")[1]["services"]["pinclip"]["version"] == before["pinclip"]
        _reembed_pins(server.storage, new_pinclip)
        wait_for(lambda: get(server, "/health")[1]["services"]["pinclip"]["version"] == new_pinclip,
                 what=f"pinclip version {new_pinclip}")
        count = {name: len(seen) for name, seen in answers.items()}
        wait_for(lambda: all(len(answers[name]) > count[name] + 3 for name in answers), what="answers after the swap")
    finally:
        stop_requests.set()
        for worker in workers:
            worker.join(timeout=60)
    for name, new in (("pinclip", new_pinclip), ("moment", new_moment)):
        seen = answers[name]
        failed = [answer for answer in seen if answer[0] != 200]
        assert not failed, f"{name}: {failed[:3]}\n{log_tail(server.log)}"
        versions = [version for _, version in seen]
        assert versions[0] == before[name] and versions[-1] == new, (name, versions[0], versions[-1])
        switched = versions.index(new)
        assert set(versions[:switched]) == {before[name]} and set(versions[switched:]) == {new}, name
