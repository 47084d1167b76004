"""The HTTP protocol Label Studio (1.2x) speaks to an ML backend, served by FastAPI.

``GET /health`` (and ``/``), ``POST /setup``, ``POST /predict``, ``POST /webhook``, ``GET /versions``.
Errors answer ``{"status": "ERROR", "error": message}``: 400 for bad input (labeling config, context,
task data; ``/setup`` already refuses a missing config or one without a control unisam can fill), 403
when a task's URL points where images may not come from (see :mod:`.images`), 502 when a task's image
cannot be fetched or read, 500 otherwise (logged with its traceback). Endpoints
are plain functions, so FastAPI runs requests from several annotators in parallel threads; the
backend they share is thread-safe.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Body, Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from .backend import TRAIN_EVENTS, BrushTarget, UnisamBackend, _is_video_config
from .images import ForbiddenURL, ImageError

logger = logging.getLogger(__name__)

JSONObject = Annotated[dict, Body()]  # a request body that must be a JSON object
BasicCredentials = Annotated[HTTPBasicCredentials | None, Depends(HTTPBasic(auto_error=False))]


def create_app(backend: UnisamBackend | None = None, *, preload: bool = False) -> FastAPI:
    """The ML backend app around ``backend`` (default: configured from the environment).

    ``preload``: load the model in a background thread at startup, so the first click does not wait
    for it (``/health`` and ``/setup`` answer at once either way).
    """
    backend = backend or UnisamBackend()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if preload:
            threading.Thread(target=_preload, args=(backend,), name="unisam-preload", daemon=True).start()
        yield

    checks = [Depends(_basic_auth(*backend.settings.basic_auth))] if backend.settings.basic_auth else []
    app = FastAPI(title="unisam Label Studio ML backend", dependencies=checks, lifespan=lifespan)
    app.state.backend = backend

    @app.get("/")
    @app.get("/health")
    def health() -> dict:
        return {
            "status": "UP",
            "model_class": type(backend).__name__,
            "model": backend.model_name,
            "model_loaded": backend.model_loaded,
            "caches": backend.cache_stats(),
        }

    @app.post("/setup")
    def setup(payload: JSONObject):
        return _answer(
            lambda: {
                "model_version": check_setup_config(payload.get("schema")) or backend.setup(
                    payload.get("project"),
                    payload.get("schema"),
                    hostname=payload.get("hostname"),
                    access_token=payload.get("access_token"),
                    extra_params=payload.get("extra_params"),
                )
            }
        )

    @app.post("/predict")
    def predict(payload: JSONObject):
        params = payload.get("params")
        context = params.get("context") if isinstance(params, dict) else None
        return _answer(
            lambda: {
                "results": backend.predict(
                    payload.get("tasks"),
                    context,
                    label_config=payload.get("label_config"),
                    project=payload.get("project"),
                )
            }
        )

    @app.post("/webhook")
    def webhook(payload: JSONObject):
        action = payload.get("action")
        if action not in TRAIN_EVENTS:
            return {"status": "Unknown event"}
        return _answer(lambda: {"status": "ok", "result": backend.fit(action, payload)}, status_code=201)

    @app.get("/versions")
    def versions() -> dict:
        return {"versions": [backend.model_version]}

    return app


def check_setup_config(label_config: object) -> None:
    """Refuse at ``/setup`` (so Label Studio says so when the backend is connected, not at the first
    prediction) a missing labeling config or one the backend cannot answer: it needs a ``<BrushLabels>``
    control on an ``<Image>``, or a smart ``<VideoRectangle>`` on a ``<Video>``. Raises ``ValueError``."""
    if not isinstance(label_config, str) or not label_config.strip():
        raise ValueError(
            "/setup needs 'schema', the project's labeling config XML (Label Studio sends it when the ML "
            "backend is connected; give the project a labeling interface with <BrushLabels> first)"
        )
    if not _is_video_config(label_config):
        BrushTarget.from_config(label_config)  # raises with what to add to the config


def _answer(compute: Callable[[], dict], status_code: int = 200) -> JSONResponse:
    """Run one request's work; map its errors to a JSON error answer with a fitting HTTP status."""
    try:
        return JSONResponse(compute(), status_code=status_code)
    except ValueError as error:
        logger.warning("bad request: %s", error)
        return _error(400, str(error))
    except ForbiddenURL as error:
        logger.warning("refused: %s", error)
        return _error(403, str(error))
    except ImageError as error:
        logger.warning("image not available: %s", error)
        return _error(502, str(error))
    except Exception as error:
        logger.exception("request failed")
        return _error(500, f"{type(error).__name__}: {error}")


def _error(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"status": "ERROR", "error": message}, status_code=status_code)


def _basic_auth(user: str, password: str) -> Callable:
    """A dependency that requires HTTP basic credentials ``user``/``password`` (compared in constant time)."""

    def check(given: BasicCredentials) -> None:
        user_ok = given is not None and secrets.compare_digest(given.username.encode(), user.encode())
        password_ok = given is not None and secrets.compare_digest(given.password.encode(), password.encode())
        if not (user_ok and password_ok):
            raise HTTPException(401, "wrong or missing basic-auth credentials", headers={"WWW-Authenticate": "Basic"})

    return check


def _preload(backend: UnisamBackend) -> None:
    try:
        predictor = backend.predictor
        logger.info("model %s loaded", predictor.model_id)
    except Exception:
        logger.exception("cannot load model %s; predictions will fail until this is fixed", backend.model_name)
