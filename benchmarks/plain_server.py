"""The alternative a user has to `embrecycle serve`: one server per task, each serving one exported model.

The same stack as `embrecycle serve` (Starlette + uvicorn, the same dynamic batching across requests: up to a
token budget, waiting at most ``--max-wait-ms``, sorted by length and cut into forward passes of at most
``--forward-tokens`` padded tokens, as the shared server's default on the CPU), serving one plain
``AutoModelForSequenceClassification`` directory (what ``embrecycle export`` writes) with every layer run for
every document. Used by ``benchmarks/serve_load.py``; not part of the library.

    .venv/bin/python benchmarks/plain_server.py --model EXPORT_DIR --port 8101 [--threads 1]

``POST /v1/predict`` takes ``{"documents": ["text", ...]}`` and answers ``{"results": [{"label": ...}, ...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def make_app(
    model_dir: str, max_wait_ms: float, max_batch_tokens: int, max_concurrent: int, forward_tokens: int
) -> Starlette:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    queue: asyncio.Queue[tuple[list[str], asyncio.Future[list[dict[str, Any]]]]] = asyncio.Queue()
    pool = ThreadPoolExecutor(1)
    state = {"in_flight": 0}

    @torch.inference_mode()
    def run(docs: list[str]) -> list[dict[str, Any]]:
        ids = tokenizer(docs, truncation=True, max_length=128)["input_ids"]
        order = sorted(range(len(docs)), key=lambda i: len(ids[i]))
        out: list[dict[str, Any]] = [{}] * len(docs)
        passes: list[list[int]] = [[]]
        for i in order:  # sorted by length, cut into passes of at most forward_tokens padded tokens (or 64 docs)
            if passes[-1] and ((len(passes[-1]) + 1) * len(ids[i]) > forward_tokens or len(passes[-1]) == 64):
                passes.append([])
            passes[-1].append(i)
        for idx in passes:
            enc = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            probs = torch.softmax(model(**enc).logits.float(), -1)
            for j, i in enumerate(idx):
                best = int(probs[j].argmax())
                out[i] = {"label": labels[best], "probabilities": dict(zip(labels, probs[j].tolist(), strict=True))}
        return out

    async def loop() -> None:
        ev = asyncio.get_running_loop()
        while True:
            first = await queue.get()
            batch, tokens = [first], sum(len(d) // 4 + 2 for d in first[0])
            deadline = ev.time() + max_wait_ms / 1000
            while tokens < max_batch_tokens:
                try:
                    item = await asyncio.wait_for(queue.get(), max(deadline - ev.time(), 0.0001))
                except TimeoutError:
                    break
                batch.append(item)
                tokens += sum(len(d) // 4 + 2 for d in item[0])
            docs = [d for b in batch for d in b[0]]
            rows = await ev.run_in_executor(pool, run, docs)
            start = 0
            for b_docs, fut in batch:
                fut.set_result(rows[start : start + len(b_docs)])
                start += len(b_docs)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()

    async def predict(request: Request) -> Response:
        if state["in_flight"] >= max_concurrent:
            return JSONResponse({"error": "overloaded"}, status_code=503, headers={"Retry-After": "1"})
        state["in_flight"] += 1
        try:
            body = await request.json()
            fut: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
            queue.put_nowait((body["documents"], fut))
            return JSONResponse({"results": await fut})
        finally:
            state["in_flight"] -= 1

    async def readyz(request: Request) -> Response:
        return JSONResponse({"status": "ready"})

    routes = [Route("/v1/predict", predict, methods=["POST"]), Route("/readyz", readyz)]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--max-concurrent", type=int, default=64)
    ap.add_argument("--forward-tokens", type=int, default=1024, help="padded tokens per forward pass at most")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    app = make_app(args.model, args.max_wait_ms, args.max_batch_tokens, args.max_concurrent, args.forward_tokens)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
