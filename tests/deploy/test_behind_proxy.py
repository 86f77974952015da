"""The real API (its production command, `python -m api.main --proxy-headers`) behind the real nginx running
deploy/nginx.conf with its sub-path example enabled: body limits per route, the API under a sub-path (through
nginx, and directly with X-Forwarded-Prefix from a trusted address), and no redirect that carries a Host the client
chose (docs/security.md, "Behind the reverse proxy")."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.api_process import production_api
from tests.support.deploy import SUB_PATH, running_nginx
from tests.support.factories import chat_rows, jsonl, make_tenant
from tests.support.http import assert_error

MB = 1024 * 1024
EVIL_HOST = "evil.example"


@dataclass(frozen=True)
class Stack:
    api: str  # the API directly, from 127.0.0.1 (a trusted proxy address by FORWARDED_ALLOW_IPS' default)
    api_port: int
    proxy: str  # nginx in front of it, deploy/nginx.conf as it ships
    key: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _, key = make_tenant()
    with production_api(tmp_path_factory.mktemp("api"), {"TUNEQUEUE_API_WORKERS": "1"}) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with running_nginx(tmp_path_factory.mktemp("nginx"), port) as proxy_port:
            yield Stack(api=url, api_port=port, proxy=f"http://127.0.0.1:{proxy_port}", key=key)


@pytest.fixture(scope="module")
def sub_path_proxy(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx in front of the same API with deploy/nginx.conf's sub-path example uncommented."""
    with running_nginx(tmp_path_factory.mktemp("nginx-sub-path"), stack.api_port, sub_path=True) as port:
        yield f"http://127.0.0.1:{port}"


def auth(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.key}"}


def three_mb_of_rows() -> bytes:
    rows = chat_rows(1000, answer="forty two " * 300)
    body = jsonl(rows)
    assert 3 * MB <= len(body) < 4 * MB
    return body


# --- body limits ------------------------------------------------------------------------------------------------


def test_nginx_refuses_a_3_mb_job_body_with_413_in_the_api_error_shape(stack: Stack) -> None:
    # Before, every route took 520 MB: a JSON route read and parsed whatever a tenant sent.
    body = b'{"model": "tiny-llama", "training_file": "' + b"x" * (3 * MB) + b'"}'
    resp = httpx.post(f"{stack.proxy}/jobs", content=body, headers={**auth(stack), "Content-Type": "application/json"},
                      timeout=30)
    error = assert_error(resp, 413, "request_too_large", param="body")
    assert "2 MiB" in error["message"] and "POST /files" in error["message"], error
    assert resp.headers["Content-Type"].startswith("application/json")


def test_a_3_mb_upload_passes_nginx_and_the_api_stores_it(stack: Stack) -> None:
    content = three_mb_of_rows()
    resp = httpx.post(f"{stack.proxy}/files", headers=auth(stack), data={"purpose": "fine-tune"},
                      files={"file": ("train.jsonl", content, "application/jsonl")}, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["bytes"] == len(content) and resp.json()["status"] == "processed", resp.json()


def test_a_3_mb_chat_completion_body_reaches_the_api(stack: Stack) -> None:
    # Inference takes a few MB (the API's own limit is 4 MiB): nginx must let 3 MB through, so whatever answers
    # comes from the API (no serve runs here), not nginx's 413.
    body = b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "' + b"x" * (3 * MB) + b'"}]}'
    resp = httpx.post(f"{stack.proxy}/v1/chat/completions", content=body, timeout=60,
                      headers={**auth(stack), "Content-Type": "application/json"})
    assert resp.status_code != 413, resp.text
    assert "error" in resp.json() or "choices" in resp.json(), resp.text


# --- a sub-path -------------------------------------------------------------------------------------------------


def openapi_url_in_docs(html: str) -> str:
    found = re.search(r"url: '([^']*)'", html)
    assert found, html
    return found.group(1)


def test_the_docs_under_the_sub_path_through_nginx_load_the_schema_under_it(stack: Stack,
                                                                             sub_path_proxy: str) -> None:
    docs = httpx.get(f"{sub_path_proxy}{SUB_PATH}/docs", timeout=10)
    assert docs.status_code == 200, docs.text
    schema_url = openapi_url_in_docs(docs.text)
    assert schema_url == f"{SUB_PATH}/openapi.json"
    schema = httpx.get(f"{sub_path_proxy}{schema_url}", timeout=10)
    assert schema.status_code == 200 and schema.json()["servers"] == [{"url": SUB_PATH}], schema.text[:500]
    # The routes answer under the prefix, with the caller's key and the same body limits as at the root.
    assert httpx.get(f"{sub_path_proxy}{SUB_PATH}/jobs", headers=auth(stack), timeout=10).status_code == 200
    too_big = httpx.post(f"{sub_path_proxy}{SUB_PATH}/jobs", content=b"x" * (3 * MB), headers=auth(stack), timeout=30)
    assert_error(too_big, 413, "request_too_large")
    # ... and at the root, which the same nginx still serves without a prefix.
    assert openapi_url_in_docs(httpx.get(f"{sub_path_proxy}/docs", timeout=10).text) == "/openapi.json"


def test_the_sub_path_without_its_slash_redirects_to_a_relative_location(sub_path_proxy: str) -> None:
    resp = httpx.get(f"{sub_path_proxy}{SUB_PATH}", headers={"Host": EVIL_HOST}, timeout=10)
    assert resp.status_code == 301 and resp.headers["Location"] == f"{SUB_PATH}/", resp.headers


def test_the_api_takes_the_prefix_header_from_a_trusted_address(stack: Stack) -> None:
    docs = httpx.get(f"{stack.api}/docs", headers={"X-Forwarded-Prefix": "/team-a/"}, timeout=10)
    assert openapi_url_in_docs(docs.text) == "/team-a/openapi.json"
    schema = httpx.get(f"{stack.api}/openapi.json", headers={"X-Forwarded-Prefix": "/team-a"}, timeout=10)
    assert schema.json()["servers"] == [{"url": "/team-a"}]


@pytest.mark.parametrize("prefix", ["/a'</script><script>alert(1)//", "//evil.example", "/../x", "https://x/"])
def test_a_prefix_that_is_not_a_plain_path_is_ignored(stack: Stack, prefix: str) -> None:
    docs = httpx.get(f"{stack.api}/docs", headers={"X-Forwarded-Prefix": prefix}, timeout=10)
    assert openapi_url_in_docs(docs.text) == "/openapi.json"


def test_a_client_s_own_prefix_header_does_not_pass_nginx(stack: Stack, sub_path_proxy: str) -> None:
    docs = httpx.get(f"{stack.proxy}/docs", headers={"X-Forwarded-Prefix": "/elsewhere"}, timeout=10)
    assert openapi_url_in_docs(docs.text) == "/openapi.json"
    docs = httpx.get(f"{sub_path_proxy}{SUB_PATH}/docs", headers={"X-Forwarded-Prefix": "/elsewhere"}, timeout=10)
    assert openapi_url_in_docs(docs.text) == f"{SUB_PATH}/openapi.json"


def test_the_api_ignores_the_prefix_header_from_an_untrusted_address(tmp_path: Path) -> None:
    # FORWARDED_ALLOW_IPS names the proxy; this client (127.0.0.1) is not it.
    with production_api(tmp_path, {"TUNEQUEUE_API_WORKERS": "1", "FORWARDED_ALLOW_IPS": "10.213.57.10"}) as (url, _):
        docs = httpx.get(f"{url}/docs", headers={"X-Forwarded-Prefix": "/team-a"}, timeout=10)
        assert openapi_url_in_docs(docs.text) == "/openapi.json"
        seen = httpx.get(f"{url}/openapi.json", headers={"X-Forwarded-Prefix": "/team-a"}, timeout=10).json()
        assert "servers" not in seen


# --- redirects --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/jobs/", "/files/", "/v1/models/", "/keys/"])
def test_no_redirect_carries_the_host_a_client_sent(stack: Stack, path: str) -> None:
    # Starlette's trailing-slash redirect built its Location from Host: `GET /jobs/` with `Host: evil.example`
    # was a 307 to http://evil.example/jobs. Now there is no such redirect (a 404), directly or through nginx.
    for base in (stack.api, stack.proxy):
        resp = httpx.get(f"{base}{path}", headers={**auth(stack), "Host": EVIL_HOST, "X-Forwarded-Host": EVIL_HOST},
                         timeout=10)
        assert EVIL_HOST not in resp.headers.get("Location", ""), resp.headers
        assert not resp.is_redirect, (base, resp.status_code, resp.headers)
        assert_error(resp, 404, "not_found")
