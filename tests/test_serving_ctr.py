"""CTRService (user -> ranked pins with p_click) on the tiny pipeline run, and its explorer panel.

A tiny CTR model is trained with the system's own ``train`` on the session's materialized run
(`materialized` in conftest.py: its validated tables and PinCLIP's fused pin embeddings) and registered by its own ``register`` into a fresh MLflow store with the
run's params (the cut-off among them), as the lifecycle does. The service serves it from a
copy of the run's validated tables with one more user who has never clicked (a new sign-up),
through the real app (uvicorn on a free 127.0.0.1 port in this process) and the tiny world's
raw root; the panel is driven in Debian's chromium through Playwright. The expected values
come from the pyfunc loaded back from the registry and from the tables read directly.
"""

from __future__ import annotations

import shutil
import threading
import time
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import uvicorn

from mmpipe.partitions import read_days
from mmpipe.registry.mlflow_registry import RunContext, start_run
from mmpipe.serving.app import create_app
from mmpipe.serving.live import LiveService
from mmpipe.serving.media import MediaStore
from mmpipe.serving.service import MAX_COUNT, ServingPaths
from mmpipe.systems.ctr import SPEC
from mmpipe.systems.ctr.data import DataSettings, ctr_inputs, item_table
from mmpipe.systems.ctr.model import CTRConfig
from mmpipe.systems.ctr.serve import P_CLICK, CTRService, register, version_uri
from mmpipe.systems.ctr.train import CTRSettings, CTRTrainConfig, train
from tests.servers import HOST, free_port
from tests.test_serving import explorer_page, get, loaded_images, screenshot, submit

CONTEXT = RunContext(data_version="tiny", orchestrator_run_id="ctr-service-test", asset_key="ctr_model")
NEW_USER = "u_new_signup"


@pytest.fixture(scope="module")
def served(materialized, tiny_world, tmp_path_factory):
    _, run_storage, _ = materialized
    root = tmp_path_factory.mktemp("ctr-serving")
    storage = root / "storage"
    shutil.copytree(run_storage / "validated", storage / "validated")
    users_path = storage / "validated" / "users.parquet"
    users = pd.read_parquet(users_path)
    users = pd.concat([users, users.iloc[[0]].assign(user_id=NEW_USER)], ignore_index=True)
    users.to_parquet(users_path, index=False)

    validated = storage / "validated"
    interactions, pins = read_days(validated / "interactions"), read_days(validated / "pins")
    board_pins = pd.read_parquet(validated / "board_pins.parquet")
    # PinCLIP's fused embeddings only: the ranking does not wait on the semantic-ID system's gate
    items = item_table(run_storage / "embeddings" / "pins", "fused")
    inputs = ctr_inputs(interactions, pins, board_pins, users, items,
                        DataSettings(history_length=5, item_buckets=4096, user_buckets=256))
    settings = CTRSettings(model=CTRConfig(use_semantic_ids=False, residual_codebooks=False, id_dim=4,
                                           multimodal_dim=8, user_dim=4, taste_dim=4, attention_hidden=8, hidden=16),
                           data=inputs.settings, embedding="fused",
                           train=CTRTrainConfig(steps=200, batch_size=128, warmup_steps=10, validate_every=50))
    torch.set_num_threads(1)
    # register() points MLflow's process-wide URIs at this store; later modules' tests load
    # `models:/` URIs of the session's pipeline run through them, so they are put back after.
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(root / "mlruns"))
        trained = train(settings, inputs)
        with start_run("ctr", "ctr-service-test", CONTEXT, params=trained.params):
            version = register(trained, settings, CONTEXT)
        live = LiveService(SPEC.service(ServingPaths(storage, tiny_world)))
        assert live.refresh(), live.status()["error"]
        app = create_app([live], MediaStore(ServingPaths(storage, tiny_world)), poll_s=None)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        try:
            yield SimpleNamespace(port=port, version=version, cutoff=str(trained.params["cutoff_date"]),
                                  history_length=inputs.settings.history_length, item_ids=list(items.ids),
                                  users=users.set_index("user_id"), interactions=interactions,
                                  board_pins=board_pins, pins=pins,
                                  pyfunc=mlflow.pyfunc.load_model(version_uri(version)))
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            mlflow.set_tracking_uri(before[0])
            mlflow.set_registry_uri(before[1])


def clicks_of(served, user: str) -> list[str]:
    """The user's clicks on pins of the item table, oldest first (day, then log order)."""
    rows = served.interactions[(served.interactions["user_id"] == user) & (served.interactions["clicked"] == 1)
                               & served.interactions["pin_id"].isin(set(served.item_ids))]
    return rows.sort_values(["date", "impression_id"])["pin_id"].tolist()


@pytest.fixture(scope="module")
def heavy_user(served) -> str:
    """The user with the most clicks (ties: the smallest id)."""
    clicked = served.interactions[served.interactions["clicked"] == 1]
    counts = clicked.groupby("user_id").size()
    return str(counts[counts == counts.max()].index.min())


def pyfunc_p_click(served, user: str, pins: list[str], history: list[str], date: str) -> np.ndarray:
    row = served.users.loc[user]
    frame = pd.DataFrame({"user_id": user, "pin_id": pins, "position": 0, "history": [history] * len(pins),
                          "country": row["country"], "signup_date": row["signup_date"], "date": date})
    return served.pyfunc.predict(frame)[P_CLICK].to_numpy()


def test_ranking_is_the_pyfuncs_top_k_without_the_users_clicks(served, heavy_user):
    status, answer = get(served, "/api/ctr/rank", {"user": heavy_user, "k": 20})
    assert status == 200, answer
    assert answer["model"] == {"name": "ctr", "version": served.version}
    clicks = clicks_of(served, heavy_user)
    assert len(clicks) > served.history_length  # the history is cut to the model's length
    assert answer["user"]["history"] == clicks[-served.history_length:]
    assert answer["user"]["clicks"] == len(clicks)
    assert answer["date"] == (pd.Timestamp(served.interactions["date"].max()) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    # every pin the model knows but those the user clicked, scored by the registered pyfunc
    candidates = [pin for pin in served.item_ids if pin not in set(clicks)]
    assert answer["candidates"] == len(candidates)
    expected = pyfunc_p_click(served, heavy_user, candidates, answer["user"]["history"], answer["date"])
    results = answer["results"]
    assert len(results) == 20 and not {pin["pin_id"] for pin in results} & set(clicks)
    p = [pin["p_click"] for pin in results]
    assert p == sorted(p, reverse=True)
    np.testing.assert_allclose(p, np.sort(expected)[::-1][:20], atol=2e-6)
    by_pin = dict(zip(candidates, expected))
    np.testing.assert_allclose(p, [by_pin[pin["pin_id"]] for pin in results], atol=2e-6)


def test_each_pin_says_whether_it_is_cold_and_carries_its_title_and_image(served, heavy_user):
    _, answer = get(served, "/api/ctr/rank", {"user": heavy_user, "k": MAX_COUNT})
    assert answer["cutoff_date"] == served.cutoff
    before = lambda dates: pd.to_datetime(dates) < pd.Timestamp(served.cutoff)  # noqa: E731
    warm = set(served.interactions.loc[before(served.interactions["date"]), "pin_id"]) | set(
        served.board_pins.loc[before(served.board_pins["saved_at"]), "pin_id"])
    flags = {pin["pin_id"]: pin["cold"] for pin in answer["results"]}
    assert flags == {pin: pin not in warm for pin in flags}
    assert any(flags.values()) and not all(flags.values())  # the tiny world's last days hold cold pins
    titles = dict(zip(served.pins["pin_id"], served.pins["title"]))
    for pin in answer["results"]:
        assert pin["title"] == titles[pin["pin_id"]] and pin["image"] == f"/media/pin/{pin['pin_id']}"
    status, image = get(served, answer["results"][0]["image"])
    assert status == 200 and image["type"] == "image/jpeg"


def test_a_user_without_clicks_still_gets_a_ranking(served):
    status, answer = get(served, "/api/ctr/rank", {"user": NEW_USER, "k": 5})
    assert status == 200, answer
    assert answer["user"]["history"] == [] and answer["user"]["clicks"] == 0
    assert answer["candidates"] == len(served.item_ids)
    expected = pyfunc_p_click(served, NEW_USER, served.item_ids, [], answer["date"])
    np.testing.assert_allclose([pin["p_click"] for pin in answer["results"]], np.sort(expected)[::-1][:5], atol=2e-6)


def test_example_users_lead_with_the_most_clicks_and_include_one_without(served, heavy_user):
    status, answer = get(served, "/api/ctr/users", {"k": 4})
    assert status == 200 and answer["model"]["version"] == served.version
    users = answer["users"]
    assert len(users) == 4 and users[0] == {"user_id": heavy_user, "clicks": len(clicks_of(served, heavy_user))}
    assert [u["clicks"] for u in users[:3]] == sorted([u["clicks"] for u in users[:3]], reverse=True)
    assert users[-1]["clicks"] == 0


@pytest.mark.parametrize(("params", "status", "message"), [
    ({"user": "u_nobody"}, 404, "unknown user 'u_nobody'"),
    ({"user": ""}, 422, "user is empty"),
    ({}, 422, "missing parameter 'user'"),
    ({"user": "u0001", "k": "0"}, 422, f"k must be between 1 and {MAX_COUNT}, got 0"),
    ({"user": "u0001", "k": str(MAX_COUNT + 1)}, 422, f"got {MAX_COUNT + 1}"),
    ({"user": "u0001", "k": "many"}, 422, "k must be a whole number"),
    ({"user": "u0001", "pins": "3"}, 422, "unexpected parameters ['pins']"),
], ids=["unknown-user", "empty-user", "missing-user", "k-zero", "k-huge", "k-not-a-number", "unexpected"])
def test_bad_request_gets_a_4xx_with_a_clear_message(served, params, status, message):
    got, body = get(served, "/api/ctr/rank", params)
    assert got == status, body
    assert message in body["error"]


# ---------------------------------------------------------------------------------------
# the panel in headless Chromium


@pytest.fixture(scope="module")
def page(served, tmp_path_factory):
    with explorer_page(served.port, tmp_path_factory.mktemp("screenshots")) as opened:
        yield opened


def test_the_panel_ranks_an_offered_user_with_thumbnails_and_cold_badges(page, served, heavy_user):
    tab = page.tab
    assert tab.locator("#feed-panel").is_visible() and not tab.locator("#pins-panel").is_visible()
    # k just large enough that a cold pin is among the results
    _, answer = get(served, "/api/ctr/rank", {"user": heavy_user, "k": MAX_COUNT})
    first_cold = next(rank for rank, pin in enumerate(answer["results"]) if pin["cold"])
    k = max(12, first_cold + 1)
    tab.fill("#feed-k", str(k))
    tab.click(f"[data-testid=feed-examples] button[data-user='{heavy_user}']")  # an offered user
    tab.wait_for_selector("#feed-results .pin")
    assert tab.input_value("#feed-user") == heavy_user
    shown = tab.eval_on_selector_all("#feed-results .pin", "pins => pins.map(p => p.dataset.pinId)")
    assert shown == [pin["pin_id"] for pin in answer["results"][:k]]
    widths = loaded_images(tab, "#feed-results")
    assert len(widths) == k and all(width > 0 for width in widths)
    cold = [pin["pin_id"] for pin in answer["results"][:k] if pin["cold"]]
    badged = tab.eval_on_selector_all("#feed-results .pin:has([data-testid=cold-badge])",
                                      "pins => pins.map(p => p.dataset.pinId)")
    assert badged == cold and cold
    assert all(width > 0 for width in loaded_images(tab, "[data-testid=feed-history]"))
    assert tab.locator("[data-testid=feed-history] img").count() == served.history_length
    assert tab.inner_text("[data-testid=feed-version]") == f"ctr v{served.version}"
    screenshot(page, "feed")


def test_the_panel_shows_the_servers_message_for_an_unknown_user(page):
    tab = page.tab
    submit(tab, "feed", user="u_nobody", k=5)
    tab.wait_for_function("() => document.querySelector('[data-testid=feed-error]').textContent.length > 0")
    assert "unknown user 'u_nobody'" in tab.inner_text("[data-testid=feed-error]")
