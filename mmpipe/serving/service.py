"""What a system's serving side declares, and the checks every request goes through.

A system serves through one :class:`Service` (in its own ``serve.py``, registered by its
SPEC's ``service`` factory). The service says which registered version it should serve
now (``target_version``: usually the champion; a service whose answers come from an index
says the version that built the index, so the query and the index share a space), loads
a version with everything it needs (``load``: model, index, tables; slow, run in the
background) and lists its :class:`Operation` s. An operation is a plain function of the
loaded state and checked parameters returning a JSON-able dict; the app gives each one a
GET route ``/api/<service>/<operation>`` and adds the model version to the answer.

Parameters are declared by kind (:data:`TEXT`, :data:`ID`, :data:`COUNT`) so one set of
checks (:func:`check_params`) refuses every bad request the same way: an empty or
overlong text, a count out of range, a missing or unexpected parameter
(:class:`BadRequest`, HTTP 422); an id the loaded data does not hold is
:class:`UnknownId` (HTTP 404), raised by the operation itself.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

TEXT, ID, COUNT = "text", "id", "count"

# A query is a sentence or a few concept words; 1000 characters is ten times any of the
# world's and still cheap to tokenize (the text towers cut at 32 tokens anyway).
MAX_TEXT_CHARS = 1000
MAX_ID_CHARS = 200
# A page of results: more would be a scan of the corpus, not a search.
MAX_COUNT = 100


class BadRequest(ValueError):
    """A request the service cannot answer as asked (HTTP 422)."""


class UnknownId(KeyError):
    """A request naming an id the loaded data does not hold (HTTP 404)."""

    def __str__(self) -> str:  # KeyError's own str() quotes the message
        return str(self.args[0]) if self.args else "unknown id"


class NotReady(RuntimeError):
    """A version cannot be served yet (its index is not built, its files are missing)."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # TEXT, ID or COUNT
    description: str
    default: int | None = None  # COUNT only; a parameter without default is required

    def check(self, raw: str | None) -> str | int:
        if raw is None:
            if self.default is None:
                raise BadRequest(f"missing parameter {self.name!r}: {self.description}")
            return self.default
        if self.kind == COUNT:
            try:
                value = int(raw)
            except ValueError:
                raise BadRequest(f"{self.name} must be a whole number, got {raw[:40]!r}") from None
            if not 1 <= value <= MAX_COUNT:
                raise BadRequest(f"{self.name} must be between 1 and {MAX_COUNT}, got {value}")
            return value
        text = raw.strip()
        limit = MAX_TEXT_CHARS if self.kind == TEXT else MAX_ID_CHARS
        if not text:
            raise BadRequest(f"{self.name} is empty: {self.description}")
        if len(raw) > limit:
            raise BadRequest(f"{self.name} is {len(raw)} characters long; at most {limit} are accepted")
        control = next((c for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None)
        if control is not None:
            raise BadRequest(f"{self.name} holds the control character {control!r}; send plain text")
        return text


@dataclass(frozen=True)
class Operation:
    """One question a service answers: ``run(state, **checked_params) -> dict``.

    ``kind`` names the question independently of the system that answers it
    ("text_to_pins", "pin_to_pins", "text_to_videos", "moments", "summary", and later
    "user_to_pins"), so the explorer page finds its panel's service without naming systems.
    """

    name: str
    kind: str
    description: str
    params: tuple[Param, ...]
    run: Callable[..., dict]

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "params": [{"name": p.name, "kind": p.kind, "description": p.description,
                            "required": p.default is None,
                            **({"default": p.default} if p.default is not None else {})}
                           for p in self.params]}


def check_params(operation: Operation, query: Mapping[str, str]) -> dict[str, Any]:
    """The operation's parameters from a request's query string, checked; BadRequest otherwise."""
    known = {param.name for param in operation.params}
    unexpected = sorted(set(query) - known)
    if unexpected:
        raise BadRequest(f"unexpected parameters {unexpected}; {operation.name} takes {sorted(known)}")
    return {param.name: param.check(query.get(param.name)) for param in operation.params}


class Served(Protocol):
    """What ``Service.load`` returns: anything holding the version it serves."""

    version: str


class Service(Protocol):
    """A system's serving side (see the module docstring)."""

    name: str  # the system's name: the URL prefix of its operations
    registered_model: str  # the MLflow registered model its versions come from
    operations: Sequence[Operation]

    def target_version(self) -> str | None:
        """The registered version to serve now; None when there is none yet."""

    def load(self, version: str) -> Served:
        """Everything ``version`` needs to answer, loaded; NotReady when it cannot be yet."""


@dataclass(frozen=True)
class ServingPaths:
    """Where a served project's data is: the pipeline's ``storage/`` and the raw landing zone."""

    storage: Path
    raw: Path

    @classmethod
    def of_project(cls, root: Path) -> ServingPaths:
        return cls(Path(root) / "storage", Path(root) / "data" / "raw")
