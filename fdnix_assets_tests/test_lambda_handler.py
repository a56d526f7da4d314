"""The Lambda handler with real API Gateway events (REST API v1 and HTTP API v2)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from fdnix_assets import lambda_handler
from fdnix_assets.lambda_handler import decode_body, handler

from . import search_support

# As API Gateway REST APIs (payload format 1.0) deliver a GET /search?q=git&limit=2.
REST_EVENT: dict[str, Any] = {
    "resource": "/search",
    "path": "/search",
    "httpMethod": "GET",
    "headers": {
        "Accept": "application/json",
        "Host": "abc123.execute-api.us-east-1.amazonaws.com",
        "User-Agent": "curl/8.5.0",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
    },
    "multiValueHeaders": {"Accept": ["application/json"]},
    "queryStringParameters": {"q": "git", "limit": "2"},
    "multiValueQueryStringParameters": {"q": ["git"], "limit": ["2"]},
    "pathParameters": None,
    "stageVariables": None,
    "requestContext": {
        "resourceId": "a1b2c3",
        "resourcePath": "/search",
        "httpMethod": "GET",
        "extendedRequestId": "Zb3XkF0uIAMFQ3w=",
        "requestTime": "25/Nov/2026:04:15:00 +0000",
        "path": "/prod/search",
        "accountId": "123456789012",
        "protocol": "HTTP/1.1",
        "stage": "prod",
        "domainPrefix": "abc123",
        "requestTimeEpoch": 1795580100000,
        "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
        "identity": {"sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0"},
        "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
        "apiId": "abc123",
    },
    "body": None,
    "isBase64Encoded": False,
}

# As API Gateway HTTP APIs (payload format 2.0) deliver the same request.
HTTP_EVENT: dict[str, Any] = {
    "version": "2.0",
    "routeKey": "GET /search",
    "rawPath": "/search",
    "rawQueryString": "q=git&limit=2",
    "headers": {
        "accept": "application/json",
        "host": "abc123.execute-api.us-east-1.amazonaws.com",
        "user-agent": "curl/8.5.0",
        "x-forwarded-for": "203.0.113.7",
    },
    "queryStringParameters": {"q": "git", "limit": "2"},
    "requestContext": {
        "accountId": "123456789012",
        "apiId": "abc123",
        "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
        "domainPrefix": "abc123",
        "http": {
            "method": "GET",
            "path": "/search",
            "protocol": "HTTP/1.1",
            "sourceIp": "203.0.113.7",
            "userAgent": "curl/8.5.0",
        },
        "requestId": "JKJaXmPLvHcESHA=",
        "routeKey": "GET /search",
        "stage": "$default",
        "time": "25/Nov/2026:04:15:00 +0000",
        "timeEpoch": 1795580100000,
    },
    "isBase64Encoded": False,
}


@pytest.fixture(scope="session")
def minified_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return search_support.sample_minified(tmp_path_factory.getbasetemp())


@pytest.fixture
def dataset(minified_sample: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FDNIX_DATASET_PATH", str(minified_sample))
    monkeypatch.setattr(lambda_handler, "_engine", None)
    return minified_sample


def rest(**params: str | list[str]) -> dict[str, Any]:
    event = copy.deepcopy(REST_EVENT)
    multi = {k: v if isinstance(v, list) else [v] for k, v in params.items()}
    event["multiValueQueryStringParameters"] = multi or None
    event["queryStringParameters"] = {k: v[-1] for k, v in multi.items()} or None
    return event


def http(**params: str | list[str]) -> dict[str, Any]:
    event = copy.deepcopy(HTTP_EVENT)
    pairs = [(k, x) for k, v in params.items() for x in (v if isinstance(v, list) else [v])]
    event["rawQueryString"] = urlencode(pairs)
    joined = {k: ",".join(v) if isinstance(v, list) else v for k, v in params.items()}
    if joined:
        event["queryStringParameters"] = joined
    else:
        event.pop("queryStringParameters")
    return event


def call(event: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
    response = handler(event, None)
    assert set(response) >= {"statusCode", "headers", "body"}
    return response["statusCode"], decode_body(response), response["headers"]


@pytest.mark.usefixtures("dataset")
@pytest.mark.parametrize("event", [REST_EVENT, HTTP_EVENT], ids=["rest-v1", "http-v2"])
def test_real_events_get_json_results(event: dict[str, Any]) -> None:
    status, body, headers = call(copy.deepcopy(event))
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body["query"] == "git" and body["limit"] == 2 and body["count"] == 2
    assert body["mode"] == "hybrid" and body["note"] is None
    assert body["results"][0]["attr_path"] == "git"
    assert {"attr_path", "pname", "version", "description", "score"} <= set(body["results"][0])


@pytest.mark.usefixtures("dataset")
@pytest.mark.parametrize("make", [rest, http], ids=["rest-v1", "http-v2"])
def test_filters_apply_before_the_limit(make: Any) -> None:
    status, body, _ = call(make(q="python", limit="5", license=["asl20", "BSD-3-Clause"]))
    assert status == 200 and body["count"] == 5
    assert all({"Apache-2.0", "BSD-3-Clause"} & set(r["licenses"]) for r in body["results"])
    status, body, _ = call(make(q="library", limit="5", broken="only"))
    assert status == 200 and body["results"] and all(r["broken"] for r in body["results"])
    status, body, _ = call(make(q="library", limit="20", broken="exclude", unfree="exclude"))
    assert not any(r["broken"] or r["unfree"] for r in body["results"])
    status, body, _ = call(make(q="git", platform="aarch64-darwin"))
    assert status == 200 and body["results"]


@pytest.mark.usefixtures("dataset")
def test_offset_pages() -> None:
    _, first, _ = call(rest(q="python http client", limit="6"))
    _, second, _ = call(rest(q="python http client", limit="3", offset="3"))
    assert [r["attr_path"] for r in second["results"]] == [
        r["attr_path"] for r in first["results"][3:]
    ]


@pytest.mark.usefixtures("dataset")
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "missing the search text"),
        ({"q": "   "}, "missing the search text"),
        ({"q": "git", "limit": "0"}, "limit must be between 1 and 100"),
        ({"q": "git", "limit": "101"}, "limit must be between 1 and 100"),
        ({"q": "git", "limit": "ten"}, "limit must be a whole number"),
        ({"q": "git", "limit": "1e9"}, "limit must be a whole number"),
        ({"q": "git", "offset": "-1"}, "offset must be a whole number"),
        ({"q": "git", "offset": "5000"}, "offset must be between 0 and 1000"),
        ({"q": "git", "lmit": "5"}, "unknown parameter 'lmit'"),
        ({"q": "x" * 300}, "the limit is 200"),
        ({"q": "x" * 600}, "longer than 512"),
        ({"q": ["git", "curl"]}, "q may be given once"),
        ({"q": "git", "broken": "maybe"}, "must be include, exclude or only"),
        ({"q": "git", "license": "MIT' OR '1'='1"}, "unknown license"),
        ({"q": "git", "license": "MIT') OR true; --"}, "unknown license"),
        ({"q": "git", "platform": "x86_64-linux' OR platform_set > 0 --"}, "unknown platform"),
    ],
)
@pytest.mark.parametrize("make", [rest, http], ids=["rest-v1", "http-v2"])
def test_invalid_parameters_get_400_with_a_message(
    make: Any, params: dict[str, Any], message: str
) -> None:
    status, body, _ = call(make(**params))
    assert status == 400, body
    assert message in body["error"]
    assert "Traceback" not in json.dumps(body)


@pytest.mark.usefixtures("dataset")
def test_too_many_parameters_and_odd_events_are_refused() -> None:
    event = rest(q="git")
    event["multiValueQueryStringParameters"] |= {f"p{i}": ["1"] for i in range(40)}
    status, body, _ = call(event)
    assert status == 400 and "too many" in body["error"]
    status, body, _ = call({"httpMethod": "GET", "queryStringParameters": "q=git"})
    assert status == 400 and "must be an object" in body["error"]
    status, body, _ = call(["not", "an", "event"])  # type: ignore[arg-type]
    assert status == 400


@pytest.mark.usefixtures("dataset")
def test_methods() -> None:
    post = rest(q="git")
    post["httpMethod"] = "POST"
    assert call(post)[0] == 405
    options = http(q="git")
    options["requestContext"]["http"]["method"] = "OPTIONS"
    response = handler(options, None)
    assert response["statusCode"] == 204
    assert response["headers"]["Access-Control-Allow-Origin"] == "*"


@pytest.mark.usefixtures("dataset")
@pytest.mark.parametrize(
    "query",
    [
        "'; DROP TABLE packages; --",
        'git" OR 1=1 --',
        "git') OR ('1'='1",
        "<script>alert(1)</script>",
        "../../../../etc/passwd",
        "\x00\x01\x02 git",
        "%27%20OR%201%3D1",
    ],
)
def test_injection_strings_are_only_search_text(query: str) -> None:
    status, body, _ = call(http(q=query, limit="3"))
    assert status == 200
    assert isinstance(body["results"], list)
    assert lambda_handler.engine().table.count_rows() == 2008


def test_missing_dataset_is_503_without_details(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FDNIX_DATASET_PATH", str(tmp_path / "absent"))
    monkeypatch.setattr(lambda_handler, "_engine", None)
    status, body, _ = call(rest(q="git"))
    assert status == 503
    assert body == {"error": "the search index is not available"}


def test_dataset_loads_once_per_container(dataset: Path) -> None:
    call(rest(q="git"))
    first = lambda_handler._engine
    call(http(q="curl"))
    assert lambda_handler._engine is first is not None


INIT_SCRIPT = """
import json, sys
from fdnix_assets import lambda_handler
opened = lambda_handler._engine is not None
response = lambda_handler.handler({"queryStringParameters": {"q": "git", "limit": "1"}}, None)
print(json.dumps({"opened_at_import": opened, "status": response["statusCode"],
                  "body": lambda_handler.decode_body(response)}))
"""


@pytest.mark.parametrize("present", [True, False], ids=["dataset", "no-dataset"])
def test_in_lambda_the_dataset_opens_while_the_container_initializes(
    dataset: Path, tmp_path: Path, present: bool
) -> None:
    # A fresh interpreter, as Lambda imports the handler module (AWS_LAMBDA_FUNCTION_NAME set).
    env = {
        **os.environ,
        "AWS_LAMBDA_FUNCTION_NAME": "fdnix-search",
        "FDNIX_DATASET_PATH": str(dataset if present else tmp_path / "absent"),
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", INIT_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if present:
        assert result["opened_at_import"] and result["status"] == 200
        assert result["body"]["results"][0]["attr_path"] == "git"
    else:
        # Importing never fails: the first request reports the missing dataset.
        assert not result["opened_at_import"] and result["status"] == 503
        assert "opening the search dataset during initialization failed" in done.stderr


def test_local_model_dataset_without_model_files_answers_from_text(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The layer ships no MiniLM weights: the handler says it searched text only.
    monkeypatch.setenv("FDNIX_MINILM_DIR", str(tmp_path / "no-model"))
    status, body, _ = call(rest(q="memcahced", limit="3"))
    assert status == 200
    assert body["mode"] == "text" and "text indexes only" in body["note"]
    assert body["results"][0]["attr_path"] == "memcached"


def test_bedrock_dataset_embeds_queries_through_invoke_model(
    tmp_path: Path, bedrock_standin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from .bedrock_standin import titan_embedding

    entries = [
        search_support.package("qux", "Turns coffee into code"),
        search_support.package("quux", "Paints fences white"),
    ]
    texts = {"qux": "software for programmers", "quux": "garden chores"}
    vectors = {a: np.asarray(titan_embedding(t, 256), np.float32) for a, t in texts.items()}
    path = search_support.listing_dataset(
        tmp_path, "titan", entries, vectors, "amazon.titan-embed-text-v2:0", 256, "bedrock"
    )
    monkeypatch.setenv("FDNIX_DATASET_PATH", str(path))
    monkeypatch.setattr(lambda_handler, "_engine", None)
    calls = bedrock_standin.invoke_model_calls
    status, body, _ = call(http(q="garden chores", limit="2"))
    assert status == 200 and body["mode"] == "hybrid"
    assert body["results"][0]["attr_path"] == "quux"
    assert bedrock_standin.invoke_model_calls == calls + 1
