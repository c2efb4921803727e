"""The CTR model as an MLflow pyfunc.

**Serving input**: a DataFrame with ``user_id``, ``pin_id`` (the target), ``position``,
``history`` (a list of the user's recently clicked pin ids, oldest first), and optionally
``country``, ``signup_date`` and ``date`` (ISO; the sign-up age). **Output**: ``p_click``.
Pins are scored from the item table the model was trained with (every pin embedded and
coded at training time, cold ones included); a pin outside it is scored as an item
without ID, semantic ID or content (a zero vector), so retrain when new pins arrive.

Artifacts: ``weights`` (model.safetensors, the item table in its buffers) and ``config``
(ctr.json: {"model": CTRConfig, "item_ids", "countries", "data", "embedding",
"codebook_version"}), the mmpipe source as ``code_paths``.

**Warm serving** (:class:`CTRService`, ``mmpipe serve``): user -> the pins of the item table
ranked by p_click at the top slot, the user's clicked pins left out, each with its cold flag,
title and image route.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from safetensors.torch import load_file, save_file

from mmpipe.config import settings_from_dict
from mmpipe.eval.splits import cold_items
from mmpipe.partitions import read_days
from mmpipe.registry.mlflow_registry import RunContext, configure, register_logged_model
from mmpipe.registry.pyfunc import copy_package_source, pinned
from mmpipe.registry.serving import serving_version, version_uri as registered_version_uri
from mmpipe.serving.service import COUNT, ID, NotReady, Operation, Param, ServingPaths, UnknownId
from mmpipe.spec import Trained
from mmpipe.systems.ctr.data import CTRInputs, DataSettings, stable_bucket
from mmpipe.systems.ctr.model import CTRConfig, CTRModel
from mmpipe.systems.ctr.train import CTRSettings, TrainedCTR
from mmpipe.train.checkpoint import MODEL_FILE

REGISTERED_NAME = "ctr"
CONFIG_FILE = "ctr.json"
P_CLICK = "p_click"


class CTRScorer:
    """A loaded model with its item ids and countries: scores serving frames."""

    def __init__(self, model: CTRModel, item_ids: list[str], countries: list[str], data: DataSettings,
                 codebook_version: str | None = None, embedding: str = ""):
        self.model, self.item_ids, self.countries, self.data = model.eval(), list(item_ids), list(countries), data
        self.codebook_version, self.embedding = codebook_version, embedding
        self.item_index = pd.Index(self.item_ids)

    @classmethod
    def from_files(cls, weights: Path, config_path: Path) -> CTRScorer:
        record = json.loads(Path(config_path).read_text())
        model = CTRModel(settings_from_dict(CTRConfig, record["model"]))
        model.load_state_dict(load_file(str(weights)))
        return cls(model, record["item_ids"], record["countries"], settings_from_dict(DataSettings, record["data"]),
                   record.get("codebook_version"), record.get("embedding", ""))

    def record(self) -> dict:
        return {"model": asdict(self.model.config), "item_ids": self.item_ids, "countries": self.countries,
                "data": asdict(self.data), "codebook_version": self.codebook_version, "embedding": self.embedding}

    def history_rows(self, pins) -> np.ndarray:
        """[history_length] item rows of the most recent ``pins`` (oldest first), -1 padding on
        the left; a pin outside the item table is dropped."""
        length = self.data.history_length
        out = np.full(length, -1, dtype=np.int64)
        rows = self.item_index.get_indexer([str(p) for p in list(pins)[-length:]])
        rows = rows[rows >= 0]
        if len(rows):
            out[length - len(rows):] = rows
        return out

    def country_codes(self, countries) -> np.ndarray:
        """Index of each country in the training countries (0: unknown)."""
        country_index = {c: i + 1 for i, c in enumerate(self.countries)}
        return np.asarray([country_index.get(str(c), 0) for c in countries], dtype=np.int64)

    def tenures(self, dates, signup_dates) -> np.ndarray:
        """log1p of the days from sign-up to each date, clipped (0 where either is missing)."""
        days = (pd.to_datetime(pd.Series(list(dates)), errors="coerce")
                - pd.to_datetime(pd.Series(list(signup_dates)), errors="coerce")).dt.days.to_numpy(dtype=np.float64)
        return np.log1p(np.clip(np.nan_to_num(days, nan=0.0), 0, self.data.max_tenure_days)).astype(np.float32)

    @torch.no_grad()
    def _scores(self, target: np.ndarray, history: np.ndarray, user: np.ndarray, country: np.ndarray,
                tenure: np.ndarray, position: np.ndarray) -> np.ndarray:
        logits = self.model(target=torch.from_numpy(target), history=torch.from_numpy(history),
                            user=torch.from_numpy(user), country=torch.from_numpy(country),
                            tenure=torch.from_numpy(tenure), position=torch.from_numpy(position))
        return torch.sigmoid(logits).numpy()

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in ("user_id", "pin_id", "position", "history") if c not in frame.columns]
        if missing:
            raise ValueError(f"serving input needs columns {missing}; got {list(frame.columns)}")
        n, length = len(frame), self.data.history_length
        history = np.full((n, length), -1, dtype=np.int64)
        for i, pins in enumerate(frame["history"]):
            history[i] = self.history_rows(pins)
        country = self.country_codes(frame.get("country", pd.Series([None] * n)))
        tenure = np.zeros(n, np.float32)
        if "signup_date" in frame.columns and "date" in frame.columns:
            tenure = self.tenures(frame["date"], frame["signup_date"])
        return self._scores(self.item_index.get_indexer(frame["pin_id"].astype(str)).astype(np.int64), history,
                            stable_bucket(frame["user_id"], self.data.user_buckets), country, tenure,
                            frame["position"].to_numpy(np.int64).copy())

    def score_user(self, user_id: str, history, country, signup_date, date, position: int = 0,
                   rows: np.ndarray | None = None, batch_size: int = 4096) -> np.ndarray:
        """p_click of item ``rows`` (every item when None) for one user at ``position``: what
        :meth:`predict` gives for those rows, the user's side computed once."""
        rows = np.arange(len(self.item_ids), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        user_history = self.history_rows(history)
        user = stable_bucket([user_id], self.data.user_buckets)
        code, tenure = self.country_codes([country]), self.tenures([date], [signup_date])
        parts = []
        for start in range(0, len(rows), batch_size):  # bounded memory: attention is [batch, H, 4 d]
            target = rows[start:start + batch_size]
            b = len(target)
            parts.append(self._scores(target, np.repeat(user_history[None], b, 0), np.repeat(user, b),
                                      np.repeat(code, b), np.repeat(tenure, b), np.full(b, position, np.int64)))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class CTRPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.scorer = CTRScorer.from_files(Path(context.artifacts["weights"]), Path(context.artifacts["config"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return pd.DataFrame({P_CLICK: self.scorer.predict(model_input)})


def default_input_example(scorer: CTRScorer) -> pd.DataFrame:
    items = scorer.item_ids[:3] or ["unknown"]
    return pd.DataFrame({"user_id": ["u1", "u2"], "pin_id": [items[0], items[-1]], "position": [0, 3],
                         "history": [items[1:], []], "country": ["US", "FR"], "signup_date": ["2025-01-01"] * 2,
                         "date": ["2026-01-30"] * 2})


def log_ctr(scorer: CTRScorer, run_context: RunContext, registered_name: str = REGISTERED_NAME) -> tuple[str, str]:
    """Log ``scorer`` as a pyfunc into the active run and register it (``challenger``);
    returns (model_uri, version). The example's output is computed from the files as
    serving reads them, so a version whose artifacts do not load is never logged."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_ctr logs into the active MLflow run")
    with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
        tmp = Path(tmp)
        weights, config = tmp / MODEL_FILE, tmp / CONFIG_FILE
        save_file({k: v.detach().cpu().contiguous() for k, v in scorer.model.state_dict().items()}, str(weights))
        config.write_text(json.dumps(scorer.record(), sort_keys=True))
        served = CTRPyfunc()
        served.scorer = CTRScorer.from_files(weights, config)
        example = default_input_example(served.scorer)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=CTRPyfunc(), artifacts={"weights": str(weights), "config": str(config)},
            code_paths=[str(copy_package_source(tmp / "code"))],
            signature=infer_signature(example, served.predict(None, example)), input_example=example,
            pip_requirements=[pinned(name) for name in ("torch", "safetensors", "numpy", "pandas")],
            metadata={"codebook_version": str(scorer.codebook_version), "embedding": scorer.embedding,
                      "items": len(scorer.item_ids)})
    return info.model_uri, register_logged_model(info.model_uri, registered_name, run_context)


def scorer_of(trained: TrainedCTR) -> CTRScorer:
    return CTRScorer(trained.model, trained.item_ids, trained.countries, trained.data, trained.codebook_version,
                     trained.embedding)


def register(trained: Trained, settings: CTRSettings, run_context: RunContext) -> str:
    return log_ctr(scorer_of(trained.model), run_context)[1]


def version_uri(version: str, name: str = REGISTERED_NAME) -> str:
    return registered_version_uri(name, version)


def load_version_scorer(version: str, name: str = REGISTERED_NAME) -> CTRScorer:
    configure()  # resolve registry URIs against the project's tracking store
    return mlflow.pyfunc.load_model(version_uri(version, name)).unwrap_python_model().scorer


def load_version_model(version: str, inputs: CTRInputs, name: str = REGISTERED_NAME) -> CTRModel:
    """The registered model, for scoring ``inputs`` row by row: refused when it was trained
    on another item table or codebook version (its rows and per-level tables would mean
    other items and codes)."""
    scorer = load_version_scorer(version, name)
    if scorer.item_ids != list(inputs.items.ids) or str(scorer.codebook_version) != str(inputs.items.codebook_version):
        raise ValueError(f"ctr version {version} was trained on another item table or codebook version "
                         f"({scorer.codebook_version}, now {inputs.items.codebook_version}): retrain it")
    return scorer.model


# ---------------------------------------------------------------------------------------
# warm serving (`mmpipe serve`): user -> ranked pins with their click probabilities


def run_param(version: str, key: str, name: str = REGISTERED_NAME) -> str | None:
    """A parameter the training run of registered ``version`` logged (None when it did not)."""
    client = configure()
    run_id = client.get_model_version(name, version).run_id
    return client.get_run(run_id).data.params.get(key) if run_id else None


def user_clicks(interactions: pd.DataFrame, item_ids, before: str) -> dict[str, list[str]]:
    """Each user's clicks dated before ``before`` on pins of ``item_ids``, oldest first (by
    day, then log order), as the training histories order them (``data.histories``)."""
    frame = interactions.astype({"impression_id": str, "user_id": str, "pin_id": str, "date": str})
    frame = frame[(frame["clicked"].astype(int) == 1) & frame["pin_id"].isin(set(map(str, item_ids)))
                  & (pd.to_datetime(frame["date"]) < pd.Timestamp(before))]
    frame = frame.sort_values(["date", "impression_id"], kind="stable")
    return {str(user): rows["pin_id"].tolist() for user, rows in frame.groupby("user_id", sort=False)}


def _table(validated: Path, table: str, columns: list[str]) -> pd.DataFrame:
    """A validated table: its day partitions (a folder) or its one file."""
    folder = validated / table
    if folder.is_dir():
        return read_days(folder, columns=columns)
    return pd.read_parquet(validated / f"{table}.parquet", columns=columns)


@dataclass
class CTRServing:
    """One loaded version: its scorer and what a ranking for a user needs from the data."""

    version: str
    scorer: CTRScorer
    users: pd.DataFrame  # by user_id: country, signup_date
    clicks: dict[str, list[str]]  # user -> clicked pins of the item table, oldest first
    today: str  # the day a ranking is for: the day after the data's last date
    cutoff_date: str  # the version's training cut-off
    cold: np.ndarray  # [N] bool per item row: no impression and no save before the cut-off
    titles: list[str]  # [N] each item's pin title ("" when the validated pins hold none)


class CTRService:
    """The CTR model's serving side (:class:`mmpipe.serving.service.Service`): the registered
    champion (else the challenger) ranks every pin it knows for a user.

    ``load`` reads the version's scorer and, from the project's storage, the validated users
    (country, signup_date), every user's clicks (validated interactions on pins of the
    model's item table, oldest first) and the item table's cold flags against the cut-off
    the version's training run logged (``cutoff_date``). A ranking is for "today", the day
    after the last interaction date, so every click in the data is history.

    ``rank`` (kind ``user_to_pins``) scores every candidate pin (the model's item table: all
    pins embedded when it was trained, cold ones included) for the user at position 0 (the
    top slot) and returns the ``k`` best. **Pins the user has already clicked are left out**,
    as a feed would; the model sees the last ``history_length`` of them as the history. A
    user without clicks is valid: an empty history, still a ranking (country, tenure and the
    user bucket). An id the users table does not hold is :class:`UnknownId`.
    """

    name = "ctr"
    registered_model = REGISTERED_NAME

    def __init__(self, paths: ServingPaths):
        self.storage = Path(paths.storage)
        self.operations = (
            Operation("rank", "user_to_pins", "the pins a user is most likely to click at the top slot, with "
                      "p_click; pins the user already clicked left out",
                      (Param("user", ID, "a user id"), Param("k", COUNT, "number of pins", default=10)), self.rank),
            Operation("users", "example_users", "user ids to try: the most clicks first, and one without clicks",
                      (Param("k", COUNT, "number of users", default=8),), self.users),
        )

    def target_version(self) -> str | None:
        return serving_version(REGISTERED_NAME)

    def load(self, version: str) -> CTRServing:
        scorer = load_version_scorer(version)
        cutoff = run_param(version, "cutoff_date")
        if cutoff is None:
            raise NotReady(f"ctr version {version}'s run logged no cutoff_date: cold pins cannot be told")
        validated = self.storage / "validated"
        try:
            users = _table(validated, "users", ["user_id", "country", "signup_date"])
            interactions = _table(validated, "interactions", ["impression_id", "user_id", "pin_id", "date", "clicked"])
            saves = _table(validated, "board_pins", ["pin_id", "saved_at"])
            pins = _table(validated, "pins", ["pin_id", "title"])
        except FileNotFoundError as err:
            raise NotReady(f"the validated tables are not there yet: {err}") from None
        users = users.astype({"user_id": str}).drop_duplicates("user_id", keep="last").set_index("user_id")
        dates = pd.to_datetime(interactions["date"], errors="coerce").dropna()
        if dates.empty:
            raise NotReady("no dated interactions: no day to rank for")
        today = (dates.max() + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
        clicks = user_clicks(interactions, scorer.item_ids, today)
        cold = cold_items(scorer.item_ids, interactions.astype({"pin_id": str}), saves.astype({"pin_id": str}), cutoff)
        title_of = dict(zip(pins["pin_id"].astype(str), pins["title"].fillna("").astype(str)))
        return CTRServing(str(version), scorer, users, clicks, today, str(cutoff), cold,
                          [title_of.get(pin, "") for pin in scorer.item_ids])

    @staticmethod
    def rank(served: CTRServing, user: str, k: int) -> dict:
        if user not in served.users.index:
            raise UnknownId(f"unknown user {user!r}: the validated users table does not hold it")
        row = served.users.loc[user]
        clicked = served.clicks.get(user, [])
        history = clicked[-served.scorer.data.history_length:]
        scorer = served.scorer
        candidates = np.flatnonzero(~scorer.item_index.isin(set(clicked)))
        p = scorer.score_user(user, history, row["country"], row["signup_date"], served.today, rows=candidates)
        top = np.argsort(-p, kind="stable")[:k]
        return {"user": {"user_id": user, "country": None if pd.isna(row["country"]) else str(row["country"]),
                         "signup_date": str(row["signup_date"]), "history": history, "clicks": len(clicked)},
                "date": served.today, "position": 0, "cutoff_date": served.cutoff_date,
                "candidates": int(len(candidates)),
                "results": [{"pin_id": scorer.item_ids[row], "title": served.titles[row],
                             "image": f"/media/pin/{quote(scorer.item_ids[row], safe='')}",
                             "p_click": round(float(p_click), 6), "cold": bool(served.cold[row])}
                            for row, p_click in zip(candidates[top].tolist(), p[top])]}

    @staticmethod
    def users(served: CTRServing, k: int) -> dict:
        counts = {user: len(served.clicks.get(user, [])) for user in served.users.index}
        clickers = sorted((user for user in counts if counts[user]), key=lambda user: (-counts[user], user))
        without = sorted(user for user in counts if not counts[user])
        chosen = clickers[:max(1, k - 1)] + without[:1]  # a new user's ranking is worth seeing too
        chosen += [user for user in clickers + without if user not in chosen][:max(0, k - len(chosen))]
        return {"users": [{"user_id": user, "clicks": counts[user]} for user in chosen[:k]]}
