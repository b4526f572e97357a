"""The HTTP server on tiny runs: every endpoint, batching across requests, bad requests, overload, keys, drain."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from embrecycle import ConfigError
from embrecycle.multitask import TaskSet
from embrecycle.serve import ServeConfig, build_app
from embrecycle.training import TrainConfig, train

DOCS = ["the protein of the method", "disease in our results", "we and the data of a model", "protein protein"]


def _train(tmp: Path, model: str, data: dict[str, Path], name: str, task: str = "classification", **kw: Any) -> str:
    cfg = TrainConfig(
        task=task, model=model, layer=2, train=str(data["train"]), dev=str(data["dev"]), out=str(tmp / name),
        cache=str(tmp / "cache"), epochs=1, lr=1e-2, batch_size=8, **kw,
    )  # fmt: skip
    return train(cfg, progress=False).run_dir


@pytest.fixture(scope="module")
def runs(
    tiny_bert_dir: str, toy_classification: dict[str, Path], toy_ner: dict[str, Path], tmp_path_factory: Any
) -> dict[str, str]:
    d = tmp_path_factory.mktemp("serve-runs")
    return {
        "topic": _train(d, tiny_bert_dir, toy_classification, "topic"),
        "topic-lora": _train(d, tiny_bert_dir, toy_classification, "topic-lora", upper="lora", seed=3),
        "ner": _train(d, tiny_bert_dir, toy_ner, "ner", task="ner"),
        "cache": str(d / "cache"),
        "train_text": str(toy_classification["train"]),
    }


def _config(runs: dict[str, str], names: tuple[str, ...] = ("topic", "topic-lora"), **kw: Any) -> ServeConfig:
    return ServeConfig(runs=[runs[n] for n in names], **kw)


@pytest.fixture
def client(runs: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(build_app(_config(runs, ("topic", "topic-lora", "ner")))) as c:
        yield c


def _training_texts(runs: dict[str, str]) -> list[str]:
    return [json.loads(line)["text"] for line in Path(runs["train_text"]).read_text().splitlines()[:3]]


def test_predict_equals_the_task_set(client: TestClient, runs: dict[str, str]) -> None:
    docs = [*DOCS, *_training_texts(runs)]
    r = client.post("/v1/predict", json={"documents": docs})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tasks"] == ["topic", "topic-lora", "ner"] and body["documents"] == len(docs)
    expected = TaskSet.load([runs["topic"], runs["topic-lora"], runs["ner"]]).predict(docs)
    for i, row in enumerate(body["results"]):
        for name, preds in expected.items():
            got, want = row["tasks"][name], preds[i]
            assert want is not None
            if "label" in want:
                assert got["label"] == want["label"]
                for label, p in want["probabilities"].items():
                    assert got["probabilities"][label] == pytest.approx(p, abs=1e-6)
            else:
                assert got["tags"] == want["tags"] and got["entities"] == want["entities"]
    # the training documents are in the runs' cache; the new ones are not (NER reads them as word lists:
    # another cache entry, so a document is a hit only when every pass found it)
    assert [row["cache_hit"] for row in body["results"]][:4] == [False] * 4


def test_cache_hits_per_document_and_task_subset(client: TestClient, runs: dict[str, str]) -> None:
    docs = [DOCS[0], *_training_texts(runs)]
    r = client.post("/v1/predict", json={"documents": docs, "tasks": ["topic"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [row["cache_hit"] for row in body["results"]] == [False, True, True, True]
    assert body["cache_hits"] == 3 and list(body["results"][0]["tasks"]) == ["topic"]


def test_tasks_health_ready_and_drift(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    assert set(tasks) == {"topic", "topic-lora", "ner"}
    t = tasks["topic"]
    assert t["task"] == "classification" and sorted(t["labels"]) == ["disease", "protein"]
    assert t["layer"] == 2 and t["num_layers"] == 4 and t["precision"] == "fp32" and t["base_model"]
    assert t["drift"]["training"] == {"disease": 0.5, "protein": 0.5}  # the toy data alternates its labels
    assert t["drift"]["observed"] == 0 and t["drift"]["js_divergence_bits"] is None
    client.post("/v1/predict", json={"documents": ["protein"] * 8, "tasks": ["topic", "ner"]})
    tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    drift = tasks["topic"]["drift"]
    assert drift["observed"] == 8 and 0.0 <= drift["js_divergence_bits"] <= 1.0
    assert sum(drift["predicted"].values()) == pytest.approx(1.0)
    assert tasks["ner"]["drift"]["observed"] == 8  # one tag per word
    assert tasks["topic-lora"]["drift"]["observed"] == 0  # not asked for


def test_metrics_parse_and_count(client: TestClient) -> None:
    client.post("/v1/predict", json={"documents": DOCS})
    client.post("/v1/predict", json={"documents": []})
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    for name in (
        "embrecycle_request_seconds", "embrecycle_batch_documents", "embrecycle_batch_tokens", "embrecycle_queue_depth",
        "embrecycle_cache_hits", "embrecycle_cache_misses", "embrecycle_documents", "embrecycle_errors",
        "embrecycle_drift_js_divergence_bits", "embrecycle_in_flight",
    ):  # fmt: skip
        assert name in families, name

    def value(family: str, sample: str, **labels: str) -> float:
        return sum(
            s.value for s in families[family].samples if s.name == sample and all(s.labels.get(k) == v
                                                                                   for k, v in labels.items())
        )  # fmt: skip

    assert value("embrecycle_cache_misses", "embrecycle_cache_misses_total") == len(DOCS)
    assert value("embrecycle_documents", "embrecycle_documents_total", task="ner") == len(DOCS)
    assert value("embrecycle_errors", "embrecycle_errors_total", kind="empty") == 1
    assert value("embrecycle_request_seconds", "embrecycle_request_seconds_count", endpoint="/v1/predict") == 2


@pytest.mark.parametrize(
    ("body", "status", "kind", "field"),
    [
        (b"{not json", 400, "malformed_json", None),
        (b"[1, 2]", 422, "wrong_type", None),
        (b'{"documents": "a text"}', 422, "wrong_type", "documents"),
        (b'{"documents": []}', 422, "empty", "documents"),
        (b'{"texts": ["a"]}', 422, "unknown_field", "texts"),
        (b'{"tasks": ["topic"]}', 422, "missing_field", "documents"),
        (b'{"documents": ["a", 3]}', 422, "wrong_type", "documents[1]"),
        (b'{"documents": [["a", null]]}', 422, "wrong_type", "documents[0]"),
        (b'{"documents": ["a", "   "]}', 422, "empty", "documents[1]"),
        (b'{"documents": ["a"], "tasks": "topic"}', 422, "wrong_type", "tasks"),
        (b'{"documents": ["a"], "tasks": ["topic", "sentiment"]}', 404, "unknown_task", "tasks"),
    ],
)
def test_bad_requests(client: TestClient, body: bytes, status: int, kind: str, field: str | None) -> None:
    r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["kind"] == kind and err["field"] == field and err["status"] == status and err["message"]
    if kind == "unknown_task":
        assert "sentiment" in err["message"] and "topic-lora" in err["message"]  # names the known tasks


def test_limits(runs: dict[str, str]) -> None:
    long_doc = " ".join(["protein"] * 100)  # the tiny runs' max length is 64 tokens
    cfg = _config(runs, max_docs=3, max_request_tokens=100, max_body_bytes=2000)
    with TestClient(build_app(cfg)) as c:
        r = c.post("/v1/predict", json={"documents": ["a"] * 4})
        assert r.status_code == 413 and "--max-docs" in r.json()["error"]["message"]
        r = c.post("/v1/predict", json={"documents": [long_doc, long_doc]})
        assert r.status_code == 413 and r.json()["error"]["kind"] == "too_many_tokens"
        r = c.post("/v1/predict", json={"documents": ["x" * 3000]})
        assert r.status_code == 413 and r.json()["error"]["kind"] == "body_too_large"
        r = c.post("/v1/predict", json={"documents": [long_doc]})
        assert r.status_code == 200 and r.json()["results"][0]["truncated"] is True and r.json()["truncated"] == 1
        assert c.get("/v1/nothing").status_code == 404 and c.get("/v1/predict").status_code == 405
    with TestClient(build_app(_config(runs, too_long="reject"))) as c:
        r = c.post("/v1/predict", json={"documents": ["a", long_doc]})
        assert r.status_code == 413 and r.json()["error"]["field"] == "documents[1]"
        assert "--too-long" in r.json()["error"]["message"]


def test_api_key(runs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(build_app(_config(runs, api_key="s3cret"))) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        for method, path in (("post", "/v1/predict"), ("get", "/v1/tasks"), ("get", "/metrics")):
            r = getattr(c, method)(path, **({"json": {"documents": ["a"]}} if method == "post" else {}))
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        wrong = {"Authorization": "Bearer nope"}
        assert c.post("/v1/predict", json={"documents": ["a"]}, headers=wrong).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post("/v1/predict", json={"documents": ["a"]}, headers=ok).status_code == 200
    monkeypatch.setenv("EMBRECYCLE_API_KEY", "from-env")
    with TestClient(build_app(_config(runs))) as c:
        assert c.get("/v1/tasks").status_code == 401
        assert c.get("/v1/tasks", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_config_errors(runs: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="max_docs=0"):
        _config(runs, max_docs=0)
    with pytest.raises(ConfigError, match="too_long='drop'"):
        _config(runs, too_long="drop")
    with pytest.raises(ConfigError, match="unknown ServeConfig keys \\['batch'\\]"):
        ServeConfig.from_dict({"runs": [runs["topic"]], "batch": 3})


# ---- a real server on a free port --------------------------------------------------------------------------


class _Thread:
    """uvicorn serving ``app`` in a background thread (no signal handlers off the main thread)."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return f"http://127.0.0.1:{self.port}"
            time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_concurrent_requests_are_batched_and_equal_the_task_set(runs: dict[str, str]) -> None:
    long_doc = " ".join(["protein"] * 100)  # truncated: the tokenizers switch truncation on and off meanwhile
    requests = [[DOCS[i % 4], f"{DOCS[(i + 1) % 4]} and the {i}", *([long_doc] * (i % 2))] for i in range(8)]
    with _Thread(build_app(_config(runs, max_wait_ms=300))) as url, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda docs: httpx.post(f"{url}/v1/predict", json={"documents": docs}, timeout=30),
                                requests))  # fmt: skip
        metrics = httpx.get(f"{url}/metrics").text
    tasks = TaskSet.load([runs["topic"], runs["topic-lora"]])
    for docs, r in zip(requests, answers, strict=True):
        assert r.status_code == 200, r.text
        want = tasks.predict(docs)
        for row, i in zip(r.json()["results"], range(len(docs)), strict=True):
            for name in ("topic", "topic-lora"):
                assert row["tasks"][name]["label"] == want[name][i]["label"]
    samples = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples}
    batches, merged = samples["embrecycle_batch_requests_count"], samples["embrecycle_batch_requests_sum"]
    assert merged == 8 and batches < 8  # concurrent requests shared batches


def test_overload_gives_503_with_retry_after(runs: dict[str, str]) -> None:
    app = build_app(_config(runs, max_concurrent=1, max_wait_ms=1500))
    with _Thread(app) as url, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, f"{url}/v1/predict", json={"documents": ["protein"]}, timeout=30)
        time.sleep(0.5)  # the first request waits in its batch for 1.5 s
        r = httpx.post(f"{url}/v1/predict", json={"documents": ["disease"]}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["kind"] == "overloaded" and "--max-concurrent" in r.json()["error"]["message"]
        assert slow.result().status_code == 200


def test_sigterm_drains_in_flight_requests(runs: dict[str, str], tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "embrecycle.cli", "serve", "--run", runs["topic"], "--port", "0",
           "--max-wait-ms", "1500"]  # fmt: skip
    env = {**os.environ, "EMBRECYCLE_PRECISION": "fp32"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and "serving" not in line:
            line = proc.stderr.readline()
        found = re.search(r" on (http://[0-9.]+:[0-9]+)", line)
        assert found, line
        base = found.group(1)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{base}/v1/predict", json={"documents": ["protein"]}, timeout=30)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            r = pending.result()
        assert r.status_code == 200 and r.json()["results"][0]["tasks"]["topic"]["label"]
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_update_cache_writes_misses_back(runs: dict[str, str], tmp_path: Path) -> None:
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(runs["cache"], cache)
    with pytest.raises(FileNotFoundError, match="no cache at"):
        build_app(ServeConfig(runs=[runs["topic"]], update_cache=True, cache=str(tmp_path / "none")))
    with TestClient(build_app(_config(runs, cache=str(cache), update_cache=True))) as c:
        doc = {"documents": ["a sentence the cache has never seen, about protein"]}
        first, second = c.post("/v1/predict", json=doc).json(), c.post("/v1/predict", json=doc).json()
    assert first["results"][0]["cache_hit"] is False and second["results"][0]["cache_hit"] is True
    assert first["results"][0]["tasks"]["topic"] == second["results"][0]["tasks"]["topic"]
