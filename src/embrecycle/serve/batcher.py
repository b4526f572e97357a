"""Dynamic batching across requests: one shared pass over the documents of every request that arrived together.

Requests wait in a queue. The batch loop takes the first, then keeps taking requests until the batch holds
``max_batch_tokens`` tokens or the first request has waited ``max_wait_ms``; a request that would overflow the
budget starts the next batch. The batch runs in one worker thread (the event loop keeps accepting requests
meanwhile): requests asking for the same tasks are predicted together by :meth:`TaskSet.predict`, which sorts
their documents by length, cuts them into forward passes of at most ``forward_tokens`` padded tokens, reads
cached states once (or runs the lower layers once for the misses) and runs every task's upper layers on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..cache.store import Cache, Document
from ..errors import CacheMissError
from ..multitask import TaskSet
from .config import ServeConfig
from .drift import DriftMonitor
from .metrics import ServerMetrics

__all__ = ["Batcher", "Job"]

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One request's documents, the tasks it asked for, its token count and where its answer goes."""

    docs: list[Document]
    tasks: tuple[str, ...]
    tokens: int
    future: asyncio.Future[list[dict[str, Any]]] = field(repr=False)


class Batcher:
    """The queue of requests and the loop that batches them (start with :meth:`start`, stop with :meth:`stop`)."""

    def __init__(
        self,
        tasks: TaskSet,
        cache: Cache | None,
        config: ServeConfig,
        metrics: ServerMetrics,
        drift: dict[str, DriftMonitor],
    ) -> None:
        self.tasks, self.cache, self.config, self.metrics, self.drift = tasks, cache, config, metrics, drift
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="embrecycle-batch")
        self._task: asyncio.Task[None] | None = None
        self._carry: Job | None = None
        self.forward_tokens = config.resolved_forward_tokens(str(tasks.models[0].hardware.device))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="embrecycle-batcher")

    async def stop(self) -> None:
        """Finish every queued request, then stop the loop and its thread."""
        if self._task is not None:
            self.queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, docs: list[Document], tasks: Sequence[str], tokens: int) -> list[dict[str, Any]]:
        """Queue one request; its per-document results when its batch is done."""
        job = Job(docs, tuple(tasks), tokens, asyncio.get_running_loop().create_future())
        self.metrics.queue_depth.inc()
        self.queue.put_nowait(job)
        return await job.future

    async def _next(self, timeout: float | None) -> Job | None:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        if timeout is None:
            return await self.queue.get()
        if timeout <= 0:
            try:
                return self.queue.get_nowait()
            except asyncio.QueueEmpty:
                raise TimeoutError from None
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.config.max_wait_ms / 1000
        stopping = False
        while not stopping:
            first = await self._next(None)
            if first is None:
                break
            batch, tokens = [first], first.tokens
            deadline = loop.time() + wait
            while tokens < self.config.max_batch_tokens:
                try:
                    job = await self._next(max(deadline - loop.time(), 0))
                except TimeoutError:
                    break
                if job is None:
                    stopping = True
                    break
                if tokens + job.tokens > self.config.max_batch_tokens:
                    self._carry = job  # starts the next batch
                    break
                batch.append(job)
                tokens += job.tokens
            self.metrics.queue_depth.dec(len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self._process, batch)
            except CacheMissError as e:
                # A cross-model run without --update-cache refuses documents its source cache lacks: only the
                # requests holding such documents fail, so the batch's jobs are answered one by one.
                if len(batch) == 1:
                    if not first.future.done():
                        first.future.set_exception(e)
                    continue
                for job in batch:
                    await self._answer_alone(job)
                continue
            except Exception as e:  # every request of the batch gets the error (the server answers 500)
                log.exception("batch of %d requests failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            for job, rows in zip(batch, results, strict=True):
                if not job.future.done():  # a client that went away cancelled its future
                    job.future.set_result(rows)

    async def _answer_alone(self, job: Job) -> None:
        if job.future.done():
            return
        try:
            (rows,) = await asyncio.get_running_loop().run_in_executor(self._executor, self._process, [job])
        except Exception as e:
            if not isinstance(e, CacheMissError):
                log.exception("request failed")
            if not job.future.done():
                job.future.set_exception(e)
            return
        if not job.future.done():
            job.future.set_result(rows)

    # ---- in the worker thread ------------------------------------------------------------------------
    def _process(self, batch: list[Job]) -> list[list[dict[str, Any]]]:
        self.metrics.batch_requests.observe(len(batch))
        self.metrics.batch_documents.observe(sum(len(j.docs) for j in batch))
        self.metrics.batch_tokens.observe(sum(j.tokens for j in batch))
        out: list[list[dict[str, Any]] | None] = [None] * len(batch)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, job in enumerate(batch):
            groups.setdefault(job.tasks, []).append(i)
        for names, members in groups.items():
            docs = [d for i in members for d in batch[i].docs]
            preds = self.tasks.predict(
                docs,
                cache=self.cache,
                update_cache=self.config.update_cache,
                batch_size=self.config.batch_size,
                tasks=names,
                max_batch_tokens=self.forward_tokens,
            )
            rows: list[dict[str, Any]] = []
            for j in range(len(docs)):
                hit = all(bool(p.cached[j]) for p in preds.values())
                rows.append(
                    {
                        "cache_hit": hit,
                        "truncated": any(bool(p.truncated[j]) for p in preds.values()),
                        "tasks": {name: p.items[j] for name, p in preds.items()},
                    }
                )
                (self.metrics.cache_hits if hit else self.metrics.cache_misses).inc()
            for name, p in preds.items():
                self.metrics.documents.labels(task=name).inc(len(docs))
                model = self.tasks.by_name(name)
                monitor = self.drift[name]
                for item in p.items:
                    if item is not None:
                        monitor.observe(model.task.labels_of(model.task.predicted(item)))
                self._export_drift(name, monitor)
            start = 0
            for i in members:
                n = len(batch[i].docs)
                out[i] = rows[start : start + n]
                start += n
        return [rows for rows in out if rows is not None]

    def _export_drift(self, name: str, monitor: DriftMonitor) -> None:
        d = monitor.divergence()
        if d is not None:
            self.metrics.drift.labels(task=name).set(d)
        for label, share in monitor.predicted_shares().items():
            self.metrics.label_share.labels(task=name, label=label).set(share)
