"""The search API as an AWS Lambda function behind API Gateway (REST v1 or HTTP API v2).

``GET ?q=ripgrep&limit=10&offset=0&license=MIT&platform=aarch64-darwin&broken=exclude``

- ``q`` (required, at most 200 characters), ``limit`` (1-100, default 10), ``offset``
  (0-1000, default 0);
- ``license``: one or more licenses, repeated or comma-separated (SPDX id, nixpkgs short
  name or full name); ``platform``: a Nix system such as ``x86_64-linux``;
- ``broken``, ``insecure``, ``unfree``, ``unsupported``: ``include`` (default), ``exclude``
  or ``only``.

Filters apply before the limit. The answer is JSON: ``{"query", "mode", "note", "offset",
"limit", "count", "results": [...]}``; ``mode`` is ``hybrid``, or ``text`` when no query
embedding was possible (``note`` says why). Every parameter is untrusted: unknown
parameters, bad numbers, unknown licenses or platforms and oversized values get a 400 with a
message and never a stack trace; filter values reach LanceDB only as values the dataset
itself holds, escaped.

The dataset is opened once per container from ``FDNIX_DATASET_PATH`` (default
``/opt/fdnix/fdnix.lancedb``, where the layer puts it): in Lambda while the container
initializes, elsewhere by the first request. A dataset embedded with Bedrock
embeds queries with ``InvokeModel``; one embedded locally with MiniLM is searched by text
alone unless the model files are available. A container answers many requests, so opening
also warms it up in the background (``PackageSearch.warm_up``: vectors in memory, the
query embedder on ONNX Runtime when installed), which needs about 200 MB more memory for
the full dataset: a function configured with less than :data:`WARM_UP_MIN_MEMORY_MB`
(``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``) does not warm up, and ``FDNIX_WARM_UP=true|false``
decides either way.

Imports nothing from fdnix_assets but the search modules (the layer ships only those).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from fdnix_assets.search import (
    FLAGS,
    MAX_LIMIT,
    MAX_OFFSET,
    InvalidQuery,
    PackageSearch,
    SearchError,
    SearchFilters,
    parse_flag_filter,
)

DEFAULT_DATASET_PATH = "/opt/fdnix/fdnix.lancedb"
DEFAULT_LIMIT = 10
# Below this much function memory the warm-up's ~200 MB could push a container out of memory.
WARM_UP_MIN_MEMORY_MB = 1024
# The share of the function's memory the warm-up may fill with vectors: the rest is for the
# open dataset's columns, LanceDB, the query model and the request.
WARM_UP_VECTOR_SHARE = 0.35
MAX_PARAMETER_CHARS = 512
MAX_PARAMETERS = 16
ALLOWED_PARAMETERS = frozenset({"q", "limit", "offset", "license", "platform", *FLAGS})
HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, OPTIONS",
    "X-Content-Type-Options": "nosniff",
}

logger = logging.getLogger(__name__)
_engine: PackageSearch | None = None
_engine_lock = threading.Lock()


class BadRequest(ValueError):
    """The request must change; the message says how."""


def dataset_path() -> str:
    return os.environ.get("FDNIX_DATASET_PATH", "").strip() or DEFAULT_DATASET_PATH


def warm_up_enabled() -> bool:
    """FDNIX_WARM_UP when set; else whether the function has the memory to warm up."""
    configured = os.environ.get("FDNIX_WARM_UP", "").strip().lower()
    if configured:
        return configured not in ("0", "false", "no")
    memory = function_memory_mb()
    if memory is not None and memory < WARM_UP_MIN_MEMORY_MB:
        logger.info(
            "not warming up: the function has %d MB, warming up wants %d MB or more "
            "(FDNIX_WARM_UP=true forces it)",
            memory,
            WARM_UP_MIN_MEMORY_MB,
        )
        return False
    return True


def vector_memory_budget() -> int | None:
    """Bytes of the function's memory the warm-up may spend on vectors (None outside Lambda)."""
    memory = function_memory_mb()
    return None if memory is None else int(memory * 1024 * 1024 * WARM_UP_VECTOR_SHARE)


def function_memory_mb() -> int | None:
    """The memory Lambda gives the function (AWS_LAMBDA_FUNCTION_MEMORY_SIZE), if it says."""
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "").strip()
    return int(memory) if memory.isdigit() else None


def engine() -> PackageSearch:
    """The container's open dataset, opened once (in Lambda, while the container initializes)
    and warmed up unless :func:`warm_up_enabled` says otherwise."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = PackageSearch.open(dataset_path())
            if warm_up_enabled():
                _engine.warm_up(memory_budget_bytes=vector_memory_budget())
        return _engine


def _response(status: int, body: Mapping[str, Any], cache: bool = False) -> dict[str, Any]:
    headers = dict(HEADERS)
    headers["Cache-Control"] = "public, max-age=300" if cache else "no-store"
    return {
        "statusCode": status,
        "headers": headers,
        "body": json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        "isBase64Encoded": False,
    }


def _method(event: Mapping[str, Any]) -> str:
    http = (event.get("requestContext") or {}).get("http") or {}
    return str(event.get("httpMethod") or http.get("method") or "GET").upper()


def query_parameters(event: Mapping[str, Any]) -> dict[str, list[str]]:
    """Every query parameter with all its values, from a v1 or v2 API Gateway event."""
    if not isinstance(event, Mapping):
        raise BadRequest("the event is not an API Gateway request")
    multi = event.get("multiValueQueryStringParameters")
    raw = event.get("rawQueryString")
    single = event.get("queryStringParameters")
    values: dict[str, list[str]] = {}
    if isinstance(multi, Mapping) and multi:
        for name, items in multi.items():
            values[str(name)] = [str(item) for item in (items or [])]
    elif isinstance(raw, str) and raw:
        if len(raw) > MAX_PARAMETER_CHARS * MAX_PARAMETERS:
            raise BadRequest("the query string is too long")
        try:
            values = parse_qs(raw, keep_blank_values=True, max_num_fields=MAX_PARAMETERS * 4)
        except ValueError:
            raise BadRequest("the query string has too many fields") from None
    elif isinstance(single, Mapping):
        for name, value in single.items():
            # HTTP API v2 joins repeated parameters with commas; v1 keeps the last one.
            values[str(name)] = [str(value)] if value is not None else [""]
    elif single is not None:
        raise BadRequest("queryStringParameters must be an object")
    if len(values) > MAX_PARAMETERS:
        raise BadRequest(f"too many query parameters (at most {MAX_PARAMETERS})")
    for name, items in values.items():
        if name not in ALLOWED_PARAMETERS:
            raise BadRequest(
                f"unknown parameter {name[:40]!r}; use: " + ", ".join(sorted(ALLOWED_PARAMETERS))
            )
        if len(items) > MAX_PARAMETERS:
            raise BadRequest(f"parameter {name} is repeated too often")
        for item in items:
            if len(item) > MAX_PARAMETER_CHARS:
                raise BadRequest(
                    f"parameter {name} is longer than {MAX_PARAMETER_CHARS} characters"
                )
    return values


def _one(values: dict[str, list[str]], name: str) -> str | None:
    items = values.get(name)
    if not items:
        return None
    if len(items) > 1:
        raise BadRequest(f"parameter {name} may be given once")
    return items[0]


def _integer(values: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    raw = _one(values, name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise BadRequest(f"{name} must be a whole number between {low} and {high}")
    value = int(text)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, not {value}")
    return value


def parse_request(event: Mapping[str, Any]) -> tuple[str, int, int, SearchFilters]:
    """(query, limit, offset, filters) from an API Gateway event; BadRequest when invalid."""
    values = query_parameters(event)
    query = _one(values, "q")
    if query is None or not query.strip():
        raise BadRequest("missing the search text: add ?q=<words>")
    limit = _integer(values, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _integer(values, "offset", 0, 0, MAX_OFFSET)
    licenses: list[str] = []
    for item in values.get("license", []):
        licenses.extend(part.strip() for part in item.split(",") if part.strip())
    platform = _one(values, "platform")
    flags: dict[str, bool | None] = {}
    try:
        for flag in FLAGS:
            raw = _one(values, flag)
            flags[flag] = None if raw is None or raw == "" else parse_flag_filter(flag, raw)
    except InvalidQuery as error:
        raise BadRequest(str(error)) from None
    filters = SearchFilters(
        licenses=tuple(licenses),
        platform=platform.strip() if platform and platform.strip() else None,
        **flags,
    )
    return query, limit, offset, filters


def handler(event: Any, context: Any) -> dict[str, Any]:
    """API Gateway (REST or HTTP API) -> search results as JSON."""
    try:
        method = _method(event) if isinstance(event, Mapping) else "GET"
        if method == "OPTIONS":
            return {"statusCode": 204, "headers": dict(HEADERS), "body": ""}
        if method not in ("GET", "HEAD"):
            return _response(405, {"error": f"method {method[:10]} is not allowed; use GET"})
        query, limit, offset, filters = parse_request(event)
        search = engine()
        response = search.search(query, limit=limit, offset=offset, filters=filters)
    except (BadRequest, InvalidQuery) as error:
        return _response(400, {"error": str(error)})
    except SearchError as error:
        logger.error("search dataset unavailable: %s", error)
        return _response(503, {"error": "the search index is not available"})
    except Exception:
        logger.exception("search failed")
        return _response(500, {"error": "internal error"})
    body = response.as_dict()
    body["count"] = len(response.results)
    result = _response(200, body, cache=True)
    if method == "HEAD":
        result["body"] = ""
    return result


def _open_during_init() -> None:
    """Opens the dataset while Lambda initializes the container, not in its first request.

    Lambda runs module code before the first invocation with a full CPU burst and freezes
    the container between invocations, pausing any background thread: starting the open
    and the warm-up here gets them done before, or while, the first request runs. A failure
    is left for that request to report (engine() retries the open).
    """
    try:
        engine()
    except Exception:  # the first request answers 503 and logs why
        logger.exception("opening the search dataset during initialization failed")


def decode_body(response: Mapping[str, Any]) -> Any:
    """The JSON body of a handler response (base64 or not), for callers and tests."""
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body) if body else None


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    _open_during_init()
