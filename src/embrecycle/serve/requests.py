"""Reading a ``POST /v1/predict`` body: every way it can be wrong gets a status code, the field and the fix.

A request is a JSON object::

    {"documents": ["a text", ...] | [["word", ...], ...], "tasks": ["name", ...]}   # tasks: optional (all)

Texts feed every task (NER tasks split them on whitespace into words); word lists (NER's usual input) are
tokenized as pre-split words by every task, as a CoNLL file's sentences are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from ..cache.store import Document
from ..tokenization import encode_documents, is_empty

__all__ = ["PredictRequest", "RequestError", "parse_predict", "read_body"]

FIELDS = ("documents", "tasks")


class RequestError(Exception):
    """A request the server refuses: the HTTP status, a short machine-readable kind, the field at fault."""

    def __init__(self, status: int, kind: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.field = status, kind, message, field

    def body(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "kind": self.kind, "field": self.field, "message": self.message}}


@dataclass
class PredictRequest:
    """A valid request: its documents, the tasks asked for, and each document's token count and truncation."""

    docs: list[Document]
    tasks: list[str]
    tokens: list[int]
    truncated: list[bool]


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> RequestError:
    return RequestError(
        413, "body_too_large", f"the request body has {size} bytes, more than the limit of {limit} "
        "(--max-body-bytes): send fewer or shorter documents per request.",
    )  # fmt: skip


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(
            400, "malformed_json", f"the body is not valid JSON ({e}): send a JSON object such as "
            '{"documents": ["a text"]}.',
        ) from None  # fmt: skip
    if not isinstance(body, dict):
        raise RequestError(
            422, "wrong_type", f"the body is a JSON {type(body).__name__}, not an object: send "
            '{"documents": [...], "tasks": [...]}.',
        )  # fmt: skip
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(
            422, "unknown_field", f"unknown fields {unknown}: a request has {list(FIELDS)}.", field=unknown[0]
        )
    return body


def parse_predict(
    raw: bytes,
    known_tasks: Sequence[str],
    tokenizer: Any,
    max_length: int,
    max_docs: int,
    max_request_tokens: int,
    too_long: str,
) -> PredictRequest:
    """Check a predict body against the server's tasks and limits (tokenizing its documents to count them)."""
    body = parse_json(raw)
    if "documents" not in body:
        raise RequestError(422, "missing_field", 'the field "documents" is missing: a list of texts or word lists.',
                           field="documents")  # fmt: skip
    docs = body["documents"]
    if not isinstance(docs, list):
        raise RequestError(
            422, "wrong_type", f'"documents" is a JSON {_kind(docs)}: it must be a list of texts or word lists.',
            field="documents",
        )  # fmt: skip
    if not docs:
        raise RequestError(422, "empty", '"documents" is empty: send at least one document.', field="documents")
    if len(docs) > max_docs:
        raise RequestError(
            413, "too_many_documents", f"{len(docs)} documents, more than the limit of {max_docs} per request "
            "(--max-docs): split the request.", field="documents",
        )  # fmt: skip
    for i, d in enumerate(docs):
        where = f"documents[{i}]"
        if isinstance(d, list):
            if not all(isinstance(w, str) for w in d):
                bad = next(w for w in d if not isinstance(w, str))
                raise RequestError(
                    422, "wrong_type", f"{where} holds a JSON {_kind(bad)}: a word list holds strings only.",
                    field=where,
                )  # fmt: skip
        elif not isinstance(d, str):
            raise RequestError(
                422, "wrong_type", f"{where} is a JSON {_kind(d)}: a document is a text or a list of words.",
                field=where,
            )  # fmt: skip
        if is_empty(d):
            raise RequestError(422, "empty", f"{where} is empty: every document needs some text.", field=where)
    tasks = _tasks(body.get("tasks"), known_tasks)
    encoded = encode_documents(tokenizer, docs, max_length, "truncate", warn=False)
    truncated = [e.truncated for e in encoded]
    if too_long == "reject" and any(truncated):
        i = truncated.index(True)
        raise RequestError(
            413, "document_too_long", f"documents[{i}] is longer than the served runs' max length of {max_length} "
            "tokens (the server rejects such documents: --too-long reject): shorten or split it.",
            field=f"documents[{i}]",
        )  # fmt: skip
    tokens = [len(e.input_ids) for e in encoded]
    if sum(tokens) > max_request_tokens:
        raise RequestError(
            413, "too_many_tokens", f"the documents hold {sum(tokens)} tokens, more than the limit of "
            f"{max_request_tokens} per request (--max-request-tokens): split the request.", field="documents",
        )  # fmt: skip
    return PredictRequest(docs, tasks, tokens, truncated)


def _tasks(given: Any, known: Sequence[str]) -> list[str]:
    if given is None:
        return list(known)
    if not isinstance(given, list) or not all(isinstance(t, str) for t in given):
        raise RequestError(
            422, "wrong_type", f'"tasks" must be a list of task names, not {json.dumps(given)[:80]}; the server '
            f"has {list(known)}.", field="tasks",
        )  # fmt: skip
    if not given:
        raise RequestError(422, "empty", f'"tasks" is empty: name at least one of {list(known)}, or omit it.',
                           field="tasks")  # fmt: skip
    unknown = [t for t in given if t not in known]
    if unknown:
        raise RequestError(
            404, "unknown_task", f"unknown tasks {unknown}: this server has {list(known)} (GET /v1/tasks).",
            field="tasks",
        )  # fmt: skip
    return list(dict.fromkeys(given))


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )
