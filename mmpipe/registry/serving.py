"""Finding the registered model a search or a server should use, with errors that say what
to run when nothing is there yet."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mmpipe.registry.mlflow_registry import CHALLENGER, CHAMPION, configure, tracking_uri
from mmpipe.registry.promotion import alias_version

RUN_PIPELINE_FIRST = "run `make run` first"


class SearchSetupError(FileNotFoundError):
    """A model, index or file the search needs does not exist yet."""


def require_tracking_store() -> None:
    """Refuse a SQLite tracking store that does not exist: opening it would create an empty one."""
    uri = tracking_uri()
    store = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if store is not None and not store.exists():
        raise SearchSetupError(f"no MLflow tracking store at {store}; {RUN_PIPELINE_FIRST}")


def version_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


def resolve_model_uri(name: str, aliases: Sequence[str] = (CHAMPION, CHALLENGER)) -> str:
    """``models:/name@alias`` for the first of ``aliases`` that is set (champion, else challenger)."""
    require_tracking_store()
    client = configure()
    for alias in aliases:
        if alias_version(client, name, alias) is not None:
            return f"models:/{name}@{alias}"
    raise SearchSetupError(f"registered model {name!r} has none of the aliases {list(aliases)}; "
                           f"{RUN_PIPELINE_FIRST} (or pass a model URI / checkpoint directory)")


def serving_version(name: str, aliases: Sequence[str] = (CHAMPION, CHALLENGER)) -> str | None:
    """The version holding the first of ``aliases`` that is set (champion, else challenger),
    or None when none is (or the tracking store does not exist yet): what a server should load."""
    try:
        require_tracking_store()
    except SearchSetupError:
        return None
    client = configure()
    for alias in aliases:
        version = alias_version(client, name, alias)
        if version is not None:
            return version
    return None
