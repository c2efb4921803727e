"""When to retrain a system (PinCLIP first): enough new data since the champion was trained, or drift.

The model in production is the registered version holding ``champion``. Its training run
logged ``cutoff_date`` (it trained on the validated pins created before it) and
``train_pins``. A retrain now would derive its own cut-off from today's validated pins
(the train window's end, :func:`mmpipe.eval.splits.date_windows`), so the pins it would *add* are those
created between the champion's cut-off and the new one, plus any late pins dated before
the champion's cut-off beyond the ones it trained on (:func:`data_since`). Retraining on
unchanged data adds nothing, so a retrain can never trigger the next one by itself.

The quality signal is the newest day's fused-embedding distribution against the
champion's training pins (:func:`centroid_shift`): the distance between the two centroids
of L2-normalised vectors, in units of the training pins' own spread.

:func:`decide_retraining` turns those numbers into at most one request per trigger: a
trigger is "new data up to cut-off C" or "drift on day D", each for one champion version;
the cursor remembers which were requested, and the run key names them, so the same
trigger never yields two runs. A new champion version starts a fresh cursor.

Everything here is a pure function of tables, arrays and a few MLflow reads; the Dagster
sensor (``orchestration/sensors.py``) only gathers inputs and returns the decision.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mmpipe.embeddings import EmbeddingsNotFoundError, read_embeddings
from mmpipe.eval.splits import date_windows

NEW_DATA = "new_data"
DRIFT = "drift"


@dataclass(frozen=True)
class RetrainingPolicy:
    """Thresholds, from ``params.yaml`` ``retraining:``."""

    min_new_pins: int = 500
    drift_threshold: float = 0.5
    min_drift_pins: int = 20
    max_reference_pins: int = 5000

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RetrainingPolicy:
        section = params.get("retraining") or {}
        known = {key: type(getattr(cls(), key))(value) for key, value in section.items()
                 if key in cls.__dataclass_fields__}
        return cls(**known)


# ---------------------------------------------------------------------------------------
# the champion and the data


@dataclass(frozen=True)
class ChampionState:
    """The champion version and what its training run recorded about its data."""

    version: str
    cutoff_date: str | None  # it trained on pins created before this date
    train_pins: int | None
    run_id: str | None = None
    data_version: str | None = None


def champion_state(client, name: str) -> ChampionState | None:
    """``name@champion`` and its training run's ``cutoff_date``/``train_pins`` params (None
    when no version holds the alias). A version without a run (or params) reads as unknown."""
    from mmpipe.registry.promotion import champion_version

    version = champion_version(client, name)
    if version is None:
        return None
    model_version = client.get_model_version(name, version)
    params, tags = {}, dict(model_version.tags or {})
    if model_version.run_id:
        run = client.get_run(model_version.run_id)
        params, tags = run.data.params, {**run.data.tags, **tags}
    train_pins = params.get("train_pins")
    return ChampionState(version=str(version), cutoff_date=params.get("cutoff_date") or None,
                         train_pins=int(train_pins) if train_pins not in (None, "") else None,
                         run_id=model_version.run_id or None, data_version=tags.get("data_version"))


def parquet_files(source: Path | str) -> list[Path]:
    """``source`` itself when it is a file, else every ``*.parquet`` below it (sorted, so
    daily partition files read in date order); empty when there is nothing."""
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        return sorted(path for path in source.rglob("*.parquet") if not path.name.startswith("."))
    return []


def read_pin_dates(source: Path | str | Sequence[Path]) -> pd.DataFrame:
    """``pin_id`` and normalised ``created_at`` of the validated pins in ``source``: one
    parquet file, a directory of partition files, or a list of files."""
    files = ([Path(path) for path in source] if not isinstance(source, (str, os.PathLike))
             else parquet_files(source))
    frames = [pd.read_parquet(path, columns=["pin_id", "created_at"]) for path in files]
    if not frames:
        return pd.DataFrame({"pin_id": pd.Series(dtype=str), "created_at": pd.Series(dtype="datetime64[ns]")})
    pins = pd.concat(frames, ignore_index=True)
    return pd.DataFrame({"pin_id": pins["pin_id"].astype(str),
                         "created_at": pd.to_datetime(pins["created_at"], format="ISO8601").dt.normalize()})


@dataclass(frozen=True)
class DataState:
    """What a retrain now would train on, next to what the champion trained on."""

    pins: int  # validated pins now
    newest_day: str | None
    next_cutoff: str | None  # the cut-off a retrain now would derive
    next_train_pins: int  # pins created before it
    new_train_pins: int  # of those, pins the champion did not train on
    unseen_pins: int  # pins created on/after the champion's cut-off (incl. its held-out days)


def _day(value) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def training_cutoff(pins: pd.DataFrame) -> str:
    """The cut-off a training run on ``pins`` uses: the end of the train window."""
    return date_windows(pins["created_at"]).train_end


def data_since(pins: pd.DataFrame, champion: ChampionState) -> DataState:
    """How many pins a retrain now would add to the champion's training set.

    Counted as the pins dated in [champion cut-off, next cut-off) plus late pins dated
    before the champion's cut-off beyond its ``train_pins``. Without a recorded cut-off
    (an older run), it is the next training set's size minus ``train_pins``, or all of it.
    """
    pins = pins.drop_duplicates("pin_id")
    dated = pins["created_at"].dropna()
    if dated.empty:
        return DataState(len(pins), None, None, 0, 0, 0)
    next_cutoff = training_cutoff(pins)
    next_start = pd.Timestamp(next_cutoff)
    next_train = int((dated < next_start).sum())
    if champion.cutoff_date is None:
        new = next_train - (champion.train_pins or 0)
        unseen = len(pins) - (champion.train_pins or 0)
    else:
        old_start = pd.Timestamp(champion.cutoff_date).normalize()
        window = int(((dated >= old_start) & (dated < next_start)).sum())
        before = int((dated < old_start).sum())
        late = max(0, before - champion.train_pins) if champion.train_pins is not None else 0
        new = window + late
        unseen = int((dated >= old_start).sum()) + int(pins["created_at"].isna().sum())
    return DataState(pins=len(pins), newest_day=_day(dated.max()), next_cutoff=next_cutoff,
                     next_train_pins=next_train, new_train_pins=max(0, new), unseen_pins=max(0, unseen))


# ---------------------------------------------------------------------------------------
# drift


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def centroid_shift(reference: np.ndarray, current: np.ndarray) -> float:
    """Distance between the centroids of the L2-normalised rows of ``current`` and
    ``reference``, in units of the reference rows' RMS distance to their own centroid.

    0 for identical sets; two samples of one distribution read about
    ``sqrt(1/len(current) + 1/len(reference))`` (:func:`noise_floor`); a value of 1 means
    the new centroid moved as far as a typical reference pin lies from the old one.
    """
    reference, current = np.asarray(reference), np.asarray(current)
    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        raise ValueError(f"need two [N, E] arrays of one width, got {reference.shape} and {current.shape}")
    reference, current = _unit_rows(reference), _unit_rows(current)
    if len(reference) < 2 or len(current) < 1:
        raise ValueError("need at least two reference rows and one current row")
    centroid = reference.mean(axis=0)
    spread = float(np.sqrt(((reference - centroid) ** 2).sum(axis=1).mean()))
    shift = float(np.linalg.norm(current.mean(axis=0) - centroid))
    if spread == 0.0:
        return 0.0 if shift == 0.0 else float("inf")
    return shift / spread


def noise_floor(n_reference: int, n_current: int) -> float:
    """The centroid shift two samples of one distribution show by chance (about)."""
    return float(np.sqrt(1.0 / max(n_current, 1) + 1.0 / max(n_reference, 1)))


@dataclass(frozen=True)
class DriftState:
    day: str  # the newest day of pins, compared with the champion's training pins
    day_pins: int
    reference_pins: int
    shift: float
    noise: float


def reference_ids(pins: pd.DataFrame, cutoff_date: str | None, limit: int) -> list[str]:
    """Up to ``limit`` pins the champion trained on (created before its cut-off), an even,
    deterministic spread over their sorted ids."""
    if cutoff_date is None:
        return []
    ids = np.sort(pins.loc[pins["created_at"] < pd.Timestamp(cutoff_date), "pin_id"].unique())
    if len(ids) > limit:
        ids = ids[np.linspace(0, len(ids) - 1, limit).round().astype(int)]
    return ids.tolist()


def newest_day_ids(pins: pd.DataFrame) -> tuple[str | None, list[str]]:
    dated = pins.dropna(subset=["created_at"])
    if dated.empty:
        return None, []
    newest = dated["created_at"].max()
    return _day(newest), sorted(dated.loc[dated["created_at"] == newest, "pin_id"].unique())


def embedding_drift(day: str, reference: np.ndarray, current: np.ndarray) -> DriftState | None:
    """The newest day's drift, or None when either side has too few embedded pins to say."""
    if len(reference) < 2 or len(current) < 1:
        return None
    return DriftState(day, len(current), len(reference), centroid_shift(reference, current),
                      noise_floor(len(reference), len(current)))


# ---------------------------------------------------------------------------------------
# the decision


@dataclass(frozen=True)
class RetrainCursor:
    """What the sensor already requested for the current champion version."""

    champion: str | None = None
    new_data_cutoff: str | None = None  # a run was requested for data up to this cut-off
    drift_day: str | None = None  # a run was requested for drift on this day
    requested: int = 0  # runs requested for this champion

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> RetrainCursor:
        if not text:
            return cls()
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            return cls()  # a hand-edited cursor that does not parse starts over
        return cls(**{key: value for key, value in record.items() if key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Trigger:
    kind: str  # NEW_DATA | DRIFT
    key: str  # stable for one trigger: part of the run key
    reason: str


@dataclass(frozen=True)
class RetrainDecision:
    """At most one run request (``run_key`` set) or the reason there is none."""

    cursor: RetrainCursor
    run_key: str | None = None
    triggers: tuple[Trigger, ...] = ()
    reason: str = ""
    numbers: dict = field(default_factory=dict)

    @property
    def fire(self) -> bool:
        return self.run_key is not None

    def tags(self) -> dict[str, str]:
        """Tags for the requested run: which champion, which triggers, and why."""
        return {"mmpipe/retrain_champion": str(self.cursor.champion),
                "mmpipe/retrain_triggers": ",".join(trigger.kind for trigger in self.triggers),
                "mmpipe/retrain_reason": self.reason[:1000]}


def _show(value: float) -> str:
    return f"{value:.3g}"


def decide_retraining(champion: ChampionState | None, data: DataState | None, drift: DriftState | None,
                      policy: RetrainingPolicy, cursor: RetrainCursor, name: str = "pinclip") -> RetrainDecision:
    """Whether to request a training run now, for which triggers, and the next cursor.

    Fires when a retrain would add at least ``min_new_pins`` pins, or when the newest day
    (of at least ``min_drift_pins`` embedded pins) shifted by at least ``drift_threshold``;
    each only if not already requested for this champion version. Both at once give one
    run. The run key is the champion version and the triggers, so it is the same whenever
    the trigger is the same.
    """
    if champion is None:
        return RetrainDecision(cursor, reason=f"no {name}@champion yet: nothing to compare new data with "
                                              "(the first model comes from the training job or `make run`)")
    if cursor.champion != champion.version:
        cursor = RetrainCursor(champion=champion.version)  # a new champion: every trigger is new again
    numbers: dict[str, Any] = {"champion": champion.version, "champion_cutoff": champion.cutoff_date,
                               "champion_train_pins": champion.train_pins}
    triggers, notes = [], []

    if data is None or data.next_cutoff is None:
        notes.append("no dated validated pins")
    else:
        numbers.update(asdict(data))
        counted = (f"{data.new_train_pins} new training pins since version {champion.version} "
                   f"(cut-off {champion.cutoff_date} -> {data.next_cutoff}; min_new_pins {policy.min_new_pins})")
        if data.new_train_pins < policy.min_new_pins:
            notes.append(counted)
        elif cursor.new_data_cutoff == data.next_cutoff:
            notes.append(f"{counted}: already requested")
        else:
            triggers.append(Trigger(NEW_DATA, f"data-{data.next_cutoff}", counted))

    if drift is None:
        notes.append(f"no drift signal (the newest day or the training pins not embedded by version {champion.version} yet)")
    else:
        numbers.update({f"drift_{key}": value for key, value in asdict(drift).items()})
        measured = (f"newest day {drift.day}: embedding shift {_show(drift.shift)} over {drift.day_pins} pins "
                    f"(threshold {_show(policy.drift_threshold)}, chance level ~{_show(drift.noise)})")
        if drift.day_pins < policy.min_drift_pins:
            notes.append(f"{measured}: fewer than min_drift_pins {policy.min_drift_pins}, not judged")
        elif not drift.shift >= policy.drift_threshold:
            notes.append(measured)
        elif cursor.drift_day == drift.day:
            notes.append(f"{measured}: already requested")
        else:
            triggers.append(Trigger(DRIFT, f"drift-{drift.day}", f"drift: {measured}"))

    if not triggers:
        return RetrainDecision(cursor, reason="; ".join(notes), numbers=numbers)
    for trigger in triggers:
        if trigger.kind == NEW_DATA:
            cursor = replace(cursor, new_data_cutoff=data.next_cutoff)
        else:
            cursor = replace(cursor, drift_day=drift.day)
    cursor = replace(cursor, requested=cursor.requested + 1)
    run_key = f"{name}-retrain-v{champion.version}-" + "-".join(trigger.key for trigger in triggers)
    return RetrainDecision(cursor, run_key=run_key, triggers=tuple(triggers),
                           reason="; ".join(trigger.reason for trigger in triggers), numbers=numbers)


# ---------------------------------------------------------------------------------------
# gathering the inputs from the project's files and registry


def validated_pins_source(validated_dir: Path, table: str = "pins") -> Path | None:
    """A validated table: ``<table>.parquet``, or a ``<table>/`` directory of daily partition files."""
    for candidate in (Path(validated_dir) / table, Path(validated_dir) / f"{table}.parquet"):
        if parquet_files(candidate):
            return candidate
    return None


def _champion_vectors(embeddings: Path, ids: Sequence[str], version: str) -> np.ndarray:
    """The fused vectors of ``ids`` as the champion embedded them; none before it has."""
    try:
        return read_embeddings(embeddings, "fused", ids=ids, model_version=version)[1]
    except EmbeddingsNotFoundError:
        return np.zeros((0, 0), dtype=np.float32)


def drift_from_files(pins: pd.DataFrame, champion: ChampionState, embeddings: Path,
                     policy: RetrainingPolicy) -> DriftState | None:
    """The newest day's fused-embedding drift against the champion's training pins, both
    as embedded by the champion; None when either is not embedded (by it) yet."""
    day, today = newest_day_ids(pins)
    if day is None:
        return None
    reference = reference_ids(pins, champion.cutoff_date, policy.max_reference_pins)
    current = _champion_vectors(embeddings, today, champion.version)
    base = _champion_vectors(embeddings, reference, champion.version)
    return embedding_drift(day, base, current)


def retraining_decision(client, name: str, validated_dir: Path, embeddings: Path,
                        policy: RetrainingPolicy, cursor: RetrainCursor, table: str = "pins") -> RetrainDecision:
    """:func:`decide_retraining` on the registry's champion of ``name`` and the project's
    files (the validated ``table`` the model trains on, its per-day embeddings)."""
    champion = champion_state(client, name)
    if champion is None:
        return decide_retraining(None, None, None, policy, cursor, name)
    source = validated_pins_source(validated_dir, table)
    if source is None:
        return RetrainDecision(cursor, reason=f"no validated {table} under {validated_dir} yet")
    pins = read_pin_dates(source)
    return decide_retraining(champion, data_since(pins, champion),
                             drift_from_files(pins, champion, embeddings, policy), policy, cursor, name)
