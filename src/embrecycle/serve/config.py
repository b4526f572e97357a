"""What ``embrecycle serve`` takes: the runs it serves, its batching, its limits and its access control."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..config import Checks, Settings, setting
from ..hardware import DEVICE_HELP, PRECISION_CHOICES, PRECISION_HELP, hardware_problems

__all__ = ["API_KEY_ENV", "CPU_FORWARD_TOKENS", "GPU_FORWARD_TOKENS", "TOO_LONG", "ServeConfig"]

API_KEY_ENV = "EMBRECYCLE_API_KEY"
"""The environment variable the server reads its bearer token from when ``--api-key`` is not given."""

TOO_LONG = ("truncate", "reject")

CPU_FORWARD_TOKENS = 1024
"""Default padded tokens per forward pass on the CPU: MiniLM-L6 over sci-cite sentences predicted 2.4-3x faster
in passes of 1,024 tokens than in passes of 64 documents (one padded pass of 4,000-8,000 tokens)."""
GPU_FORWARD_TOKENS = 16384


@dataclass
class ServeConfig(Settings):
    """A server of many task models over one trunk (what ``embrecycle serve`` takes).

    Requests are batched across clients: a batch grows until it holds ``max_batch_tokens`` tokens or its first
    request has waited ``max_wait_ms``; each batch reads its documents' cached states once (or runs the lower
    layers once for the misses) and then every requested task's upper layers on them.
    """

    settings_name = "serve"

    runs: list[str] = setting(
        help="Run directory from `embrecycle train`; repeat for every task to serve (same base model and cut).",
        flag="--run",
        comma_separated=False,
    )
    cache: str | None = setting(None, "Cache (directory or URL) to look documents up in (default: the first run's).")
    update_cache: bool = setting(False, "Store the states of documents that missed the cache (crash-safe, as builds).")
    host: str = setting("127.0.0.1", "Address to bind (default: this machine only; 0.0.0.0 for every interface).")
    port: int = setting(8080, "Port to listen on (0: any free port, printed at start).")
    max_batch_tokens: int = setting(
        8192, "Tokens per batch across requests at most (padded: documents x longest document)."
    )
    max_wait_ms: float = setting(5.0, "How long a batch waits for more requests after its first one, in ms.")
    batch_size: int = setting(64, "Documents per forward pass at most.")
    forward_tokens: int | None = setting(
        None,
        "Padded tokens per forward pass at most: a batch's documents, sorted by length, are cut into passes of "
        "about this size (default: 1024 on the CPU, where larger passes ran 2-3x slower, 16384 on a GPU).",
    )
    max_docs: int = setting(64, "Documents per request at most (more: 413).")
    max_request_tokens: int = setting(16384, "Tokens per request at most, after truncation (more: 413).")
    too_long: str = setting(
        "truncate",
        "A document longer than the runs' max length: truncate (and say so per document) or reject (413).",
        choices=TOO_LONG,
    )
    max_concurrent: int = setting(
        64, "Requests queued or in a batch at most; beyond it, 503 with Retry-After (backpressure)."
    )
    max_body_bytes: int = setting(4_000_000, "Request body size at most, in bytes (more: 413).")
    api_key: str | None = setting(
        None,
        f"Bearer token every endpoint but /healthz and /readyz requires (default: ${API_KEY_ENV} if set, else none).",
    )
    drift_window: int = setting(1000, "Predicted labels per task in the drift signal's sliding window.")
    shutdown_timeout: float = setting(30.0, "Seconds SIGTERM waits for in-flight requests before it cancels them.")
    device: str = setting("auto", f"Where the models run: {DEVICE_HELP}.")
    precision: str = setting(
        "auto",
        f"Compute precision: {PRECISION_HELP}.",
        choices=PRECISION_CHOICES,
    )

    def problems(self) -> list[str]:
        checks = Checks()
        checks.require(bool(self.runs), "--run is required (at least one run directory)")
        checks.positive(
            max_batch_tokens=self.max_batch_tokens,
            batch_size=self.batch_size,
            forward_tokens=self.forward_tokens,
            max_docs=self.max_docs,
            max_request_tokens=self.max_request_tokens,
            max_concurrent=self.max_concurrent,
            max_body_bytes=self.max_body_bytes,
            drift_window=self.drift_window,
            shutdown_timeout=self.shutdown_timeout,
        )
        checks.non_negative(max_wait_ms=self.max_wait_ms)
        checks.within("port", self.port, 0, 65535)
        checks.choice("too_long", self.too_long, TOO_LONG)
        checks.require(self.api_key != "", "--api-key is empty (omit it to serve without a key)")
        return checks.problems + hardware_problems(self.device, self.precision)

    def resolved_forward_tokens(self, device: str) -> int:
        """``forward_tokens``, else the default for ``device`` (a torch device string)."""
        if self.forward_tokens is not None:
            return self.forward_tokens
        return CPU_FORWARD_TOKENS if device.startswith("cpu") else GPU_FORWARD_TOKENS

    def resolved_api_key(self) -> str | None:
        """``api_key``, else the environment's ``EMBRECYCLE_API_KEY`` (an empty variable counts as unset)."""
        return self.api_key or os.environ.get(API_KEY_ENV) or None
