"""Running the server: load the runs once, open their cache, serve with uvicorn until SIGTERM or Ctrl-C.

Why Starlette and uvicorn: the server needs a handful of JSON routes, an event loop to batch concurrent
requests, and a graceful shutdown; Starlette is the small, well-kept ASGI toolkit FastAPI itself is built on
(without FastAPI's pydantic layer, whose automatic 422s would not name our limits), and uvicorn is the ASGI
server both are usually deployed with. SIGTERM stops accepting connections, lets the requests in flight finish
(up to ``shutdown_timeout``), answers what is still queued, and exits 0.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from ..errors import ConfigError
from ..multitask import TaskSet
from .app import ServerState, create_app
from .config import ServeConfig

__all__ = ["build_app", "serve"]

log = logging.getLogger(__name__)


def build_app(config: ServeConfig) -> Starlette:
    """Load ``config.runs`` as one :class:`TaskSet`, open the cache, and make the application."""
    tasks = TaskSet.load(config.runs, config.device, config.precision)
    cache = tasks.models[0].open_cache(config.cache)  # checked against every run by each prediction
    for m in tasks.models[1:]:
        if cache is not None:
            m.open_cache(cache)
    if config.update_cache and cache is None:
        raise ConfigError(
            "--update-cache needs a cache to add to: pass --cache DIR (a new directory is created on first use "
            "with `embrecycle cache build`), or drop --update-cache."
        )
    return create_app(tasks, cache, config)


class _Server(uvicorn.Server):
    """uvicorn's server, marking the application as draining (``/readyz`` 503) as soon as a signal arrives, and
    exiting 0 after a drained SIGTERM (an orchestrator's normal stop, not a crash)."""

    def __init__(self, config: uvicorn.Config, state: ServerState, on_ready: Callable[[str], None] | None) -> None:
        super().__init__(config)
        self._state, self._on_ready = state, on_ready

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.draining = True
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and self._captured_signals[-1:] == [sig]:
            self._captured_signals.pop()  # drained: exit 0 instead of re-raising SIGTERM afterwards

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._on_ready is not None and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._on_ready(f"http://{host}:{port}")


def serve(config: ServeConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``config.runs`` until SIGTERM/SIGINT; ``on_ready`` gets the address once the port is bound."""
    app = build_app(config)
    state: ServerState = app.state.server
    uv = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=math.ceil(config.shutdown_timeout),
    )
    _Server(uv, state, on_ready).run()
