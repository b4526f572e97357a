"""The HTTP application: many task models over one trunk behind one ``POST /v1/predict``.

Endpoints (JSON unless said otherwise):

- ``POST /v1/predict``: ``{"documents": [...], "tasks": [...]}`` (``tasks`` optional) → per document whether it
  was a cache hit, whether it was truncated, and per task its prediction (``label`` and ``probabilities``, or
  ``words``, ``tags`` and ``entities``);
- ``GET /v1/tasks``: each task's name, task type, labels, base model, cut, precision and drift summary;
- ``GET /healthz`` (the process answers) and ``GET /readyz`` (models loaded, batching running, not draining);
- ``GET /metrics``: Prometheus text format.

Every endpoint but the two health checks requires ``Authorization: Bearer KEY`` when the server has a key.
Every refusal is ``{"error": {"status", "kind", "field", "message"}}`` with its status code.
"""

from __future__ import annotations

import contextlib
import copy
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..cache.store import Cache
from ..errors import CacheMissError
from ..multitask import TaskSet
from .batcher import Batcher
from .config import ServeConfig
from .drift import DriftMonitor
from .metrics import ServerMetrics
from .requests import PredictRequest, RequestError, parse_predict, read_body

__all__ = ["ServerState", "create_app", "describe_tasks"]

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class ServerState:
    """What the endpoints share: the task set, its cache, the settings, metrics, drift and the batcher."""

    tasks: TaskSet
    cache: Cache | None
    config: ServeConfig
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    drift: dict[str, DriftMonitor] = field(default_factory=dict)
    batcher: Batcher | None = None
    in_flight: int = 0
    draining: bool = False

    def __post_init__(self) -> None:
        for m in self.tasks.models:
            self.drift.setdefault(m.run_dir.name, DriftMonitor(m.record.label_counts, self.config.drift_window))
        self.api_key = self.config.resolved_api_key()
        # Requests are checked in a thread pool while the batch thread tokenizes with the runs' tokenizer: a fast
        # tokenizer called from two threads at once can fail with "Already borrowed" (its truncation settings
        # are state on one shared object), so the checks use their own copy, one at a time.
        self.request_tokenizer = copy.deepcopy(self.tasks.models[0].tokenizer)
        self.request_tokenizer_lock = threading.Lock()

    def parse(self, raw: bytes) -> PredictRequest:
        """Check one request body (in a worker thread)."""
        first = self.tasks.models[0]
        with self.request_tokenizer_lock:
            return parse_predict(
                raw,
                self.tasks.names,
                self.request_tokenizer,
                first.record.states.max_length,
                self.config.max_docs,
                self.config.max_request_tokens,
                self.config.too_long,
            )


def create_app(tasks: TaskSet, cache: Cache | None, config: ServeConfig) -> Starlette:
    """The ASGI application serving ``tasks`` (see the module docstring); ``app.state.server`` holds its state."""
    state = ServerState(tasks, cache, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.batcher = Batcher(tasks, cache, config, state.metrics, state.drift)
        state.batcher.start()
        try:
            yield
        finally:
            state.draining = True
            await state.batcher.stop()  # answers whatever is still queued first

    def endpoint(name: str, handler: Handler, protected: bool = True) -> Handler:
        async def wrapped(request: Request) -> Response:
            start = time.perf_counter()
            try:
                if protected:
                    _authorize(request, state.api_key)
                response = await handler(request)
            except RequestError as e:
                state.metrics.errors.labels(kind=e.kind).inc()
                headers = {"Retry-After": "1"} if e.status == 503 else {}
                if e.status == 401:
                    headers["WWW-Authenticate"] = "Bearer"
                response = JSONResponse(e.body(), status_code=e.status, headers=headers)
            except Exception as e:
                log.exception("%s failed", name)
                state.metrics.errors.labels(kind="internal").inc()
                err = RequestError(500, "internal", f"{type(e).__name__}: {e}")
                response = JSONResponse(err.body(), status_code=500)
            state.metrics.requests.labels(endpoint=name, status=str(response.status_code)).inc()
            state.metrics.latency.labels(endpoint=name).observe(time.perf_counter() - start)
            return response

        return wrapped

    async def predict(request: Request) -> Response:
        if state.draining:
            raise RequestError(503, "draining", "the server is shutting down: retry on another instance.")
        if state.in_flight >= config.max_concurrent:
            raise RequestError(
                503, "overloaded", f"{state.in_flight} requests are in progress, the limit (--max-concurrent "
                f"{config.max_concurrent}): retry after a moment.",
            )  # fmt: skip
        state.in_flight += 1
        state.metrics.in_flight.inc()
        try:
            raw = await read_body(request, config.max_body_bytes)
            req = await run_in_threadpool(state.parse, raw)
            assert state.batcher is not None
            try:
                rows = await state.batcher.submit(req.docs, req.tasks, sum(req.tokens))
            except CacheMissError as e:  # a cross-model run's source cache lacks a document of this request
                raise RequestError(422, "source_cache_miss", str(e)) from None
        finally:
            state.in_flight -= 1
            state.metrics.in_flight.dec()
        return JSONResponse(
            {
                "results": rows,
                "tasks": req.tasks,
                "documents": len(rows),
                "cache_hits": sum(r["cache_hit"] for r in rows),
                "truncated": sum(r["truncated"] for r in rows),
            }
        )

    async def list_tasks(request: Request) -> Response:
        return JSONResponse({"tasks": describe_tasks(state)})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if state.batcher is None or state.draining:
            why = "draining" if state.draining else "starting"
            return JSONResponse({"status": why}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready", "tasks": tasks.names})

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def not_found(request: Request, exc: Exception) -> Response:
        err = RequestError(404, "not_found", f"no endpoint {request.method} {request.url.path}: see GET /v1/tasks, "
                           "POST /v1/predict, /healthz, /readyz, /metrics.")  # fmt: skip
        return JSONResponse(err.body(), status_code=404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        err = RequestError(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}.")
        return JSONResponse(err.body(), status_code=405)

    app = Starlette(
        routes=[
            Route("/v1/predict", endpoint("/v1/predict", predict), methods=["POST"]),
            Route("/v1/tasks", endpoint("/v1/tasks", list_tasks), methods=["GET"]),
            Route("/healthz", endpoint("/healthz", healthz, protected=False), methods=["GET"]),
            Route("/readyz", endpoint("/readyz", readyz, protected=False), methods=["GET"]),
            Route("/metrics", endpoint("/metrics", metrics), methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed},
        lifespan=lifespan,
    )
    app.state.server = state
    return app


def describe_tasks(state: ServerState) -> list[dict[str, Any]]:
    """``GET /v1/tasks``: per task its type, labels, base model, cut, precision and drift summary."""
    out = []
    for m in state.tasks.models:
        s = m.record.states
        out.append(
            {
                "name": m.run_dir.name,
                "task": m.task.name,
                "labels": list(m.labels),
                "method": m.record.method,
                "base_model": s.model,
                "model_revision": m.record.model_revision,
                "layer": s.layer,
                "num_layers": s.num_layers,
                "max_length": s.max_length,
                "precision": m.hardware.precision,
                "device": str(m.hardware.device),
                "trained_precision": m.record.precision,
                "drift": state.drift[m.run_dir.name].summary(),
            }
        )
    return out


def _authorize(request: Request, key: str | None) -> None:
    if key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise RequestError(
            401, "unauthorized", "this server requires Authorization: Bearer <key> (the key given to "
            "`embrecycle serve` by --api-key or $EMBRECYCLE_API_KEY).",
        )  # fmt: skip
