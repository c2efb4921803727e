"""The serving app: every service's operations as GET routes, the media, the explorer page.

    GET /                                  the explorer page (static HTML + JS, no build step)
    GET /health                            each service's loaded version, target and last error
    GET /api/services                      the same, with each operation's parameters
    GET /api/<service>/<operation>?...     an answer, naming the model version that produced it
    GET /media/pin/<pin_id>                a validated pin's image
    GET /media/frame/<video_id>?t=<s>      the stored frame of a video nearest t seconds (JPEG)

Errors are JSON ``{"error": message}``: 422 for a bad parameter (empty or overlong text,
a count out of range, a missing or unexpected parameter), 404 for an id the data does not
hold or an unknown route, 503 while a service has no version loaded (with the reason).
The app knows services only through :class:`mmpipe.serving.service.Service`: it never
names a system.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmpipe.serving.live import LiveService, Poller
from mmpipe.serving.media import MediaStore
from mmpipe.serving.service import BadRequest, Operation, UnknownId, check_params

STATIC = Path(__file__).resolve().parent / "static"
MAX_SECONDS = 24 * 3600.0  # a keyframe time beyond a day is no video's


class ServiceUnavailable(RuntimeError):
    """A service with no loaded version (HTTP 503)."""


def create_app(services: Sequence[LiveService], media: MediaStore, poll_s: float | None = 5.0) -> FastAPI:
    """The app over ``services`` (already refreshed once, or refreshed on startup here).
    ``poll_s``: how often the registry is polled for a new version (None: never)."""
    names = [live.service.name for live in services]
    if len(set(names)) != len(names):
        raise ValueError(f"two services share a name: {names}")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        poller = Poller(services, poll_s) if poll_s else None
        if poller is not None:
            poller.start()
        yield
        if poller is not None:
            poller.stop()

    app = FastAPI(title="mmpipe serving", lifespan=lifespan,
                  description="Each system's champion, loaded once; answers name their model version.")

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest):
        return JSONResponse({"error": str(err)}, status_code=422)

    @app.exception_handler(UnknownId)
    async def unknown_id(request: Request, err: UnknownId):
        return JSONResponse({"error": str(err)}, status_code=404)

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, err: ServiceUnavailable):
        return JSONResponse({"error": str(err)}, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.get("/health")
    def health() -> dict:
        status = {live.service.name: live.status() for live in services}
        for entry in status.values():
            entry.pop("operations")
        return {"ready": all(entry["version"] is not None for entry in status.values()), "services": status}

    @app.get("/api/services")
    def describe() -> dict:
        return {"services": {live.service.name: live.status() for live in services}}

    for live in services:
        for operation in live.service.operations:
            app.add_api_route(f"/api/{live.service.name}/{operation.name}", _endpoint(live, operation),
                              methods=["GET"], name=f"{live.service.name}.{operation.name}",
                              summary=operation.description)

    @app.get("/media/pin/{pin_id}")
    def pin_image(pin_id: str) -> Response:
        content, media_type = media.pin_image(pin_id)
        return Response(content, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    @app.get("/media/frame/{video_id}")
    def keyframe(video_id: str, request: Request) -> Response:
        query = dict(request.query_params)
        unexpected = sorted(set(query) - {"t"})
        if unexpected:
            raise BadRequest(f"unexpected parameters {unexpected}; a keyframe takes 't' (seconds)")
        try:
            t_s = float(query.get("t", "0"))
        except ValueError:
            raise BadRequest(f"t must be a time in seconds, got {query['t'][:40]!r}") from None
        if not math.isfinite(t_s) or not 0 <= t_s <= MAX_SECONDS:
            raise BadRequest(f"t must be a time in seconds between 0 and {MAX_SECONDS:g}, got {t_s}")
        return Response(media.keyframe(video_id, t_s), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _endpoint(live: LiveService, operation: Operation):
    def answer(request: Request) -> dict:
        params = check_params(operation, dict(request.query_params))
        state = live.current  # read once: this request answers from one version to the end
        if state is None:
            error = live.status()["error"] or "it is loading"
            raise ServiceUnavailable(f"{live.service.name} has no model loaded: {error}")
        result = operation.run(state, **params)
        return {"service": live.service.name, "operation": operation.name,
                "model": {"name": live.service.registered_model, "version": state.version}, **result}

    answer.__name__ = f"{live.service.name}_{operation.name}"
    return answer
