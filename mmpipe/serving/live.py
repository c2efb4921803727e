"""Hot swap: one loaded version per service, replaced whole when the registry moves.

A :class:`LiveService` holds the state its service loaded for one version. A request
reads ``current`` once and answers from that object to the end, so it never sees half of
one version and half of another. :meth:`LiveService.refresh` asks the service which
version it should serve; when that differs from the loaded one it loads the new version
(model, index, tables: seconds) while the old one keeps answering, then swaps the
reference (one assignment, atomic under the GIL). A load that fails leaves the old version
serving and is reported by :meth:`status` and retried at the next poll.

:class:`Poller` refreshes every service every ``interval_s`` seconds on one background
thread (the alias lookup is one query to the tracking store, the index record one small
JSON file), so a promotion reaches the server within a poll and a load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from mmpipe.serving.service import Served, Service

log = logging.getLogger("mmpipe.serving")


class LiveService:
    def __init__(self, service: Service):
        self.service = service
        self._current: Served | None = None
        self._loaded_at: float | None = None
        self._target: str | None = None
        self._error: str | None = None
        self._refreshing = threading.Lock()  # one load at a time (the poller and a manual refresh)

    @property
    def current(self) -> Served | None:
        return self._current

    def refresh(self) -> bool:
        """Load and swap in the service's target version if it changed; True when swapped."""
        with self._refreshing:
            try:
                target = self.service.target_version()
            except Exception as err:  # a tracking store that is briefly locked or gone: keep serving
                self._error = f"cannot tell which version to serve: {err}"
                log.warning("%s: %s", self.service.name, self._error)
                return False
            self._target = target
            current = self._current
            if target is None:
                self._error = None if current is not None else (
                    f"no registered version of {self.service.registered_model!r} to serve yet")
                return False
            if current is not None and current.version == target:
                self._error = None
                return False
            started = time.perf_counter()
            try:
                loaded = self.service.load(target)
            except Exception as err:  # the old version keeps answering; retried at the next poll
                message = f"cannot load {self.service.registered_model} version {target}: {err}"
                if message != self._error:
                    log.warning("%s: %s", self.service.name, message)
                self._error = message
                return False
            self._current, self._loaded_at, self._error = loaded, time.time(), None
            log.info("%s: serving %s version %s (was %s; loaded in %.1f s)", self.service.name,
                     self.service.registered_model, target, None if current is None else current.version,
                     time.perf_counter() - started)
            return True

    def status(self) -> dict:
        current = self._current
        return {"registered_model": self.service.registered_model,
                "version": None if current is None else current.version,
                "target_version": self._target, "loaded_at": self._loaded_at, "error": self._error,
                "operations": [operation.describe() for operation in self.service.operations]}


class Poller:
    """Refreshes ``services`` every ``interval_s`` seconds on a daemon thread until stopped."""

    def __init__(self, services: Sequence[LiveService], interval_s: float):
        if interval_s <= 0:
            raise ValueError(f"the poll interval must be positive, got {interval_s}")
        self.services, self.interval_s = list(services), interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmpipe-serving-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for live in self.services:
                if self._stop.is_set():
                    return
                live.refresh()
