"""The probe against real servers: pytest-httpserver, and raw sockets for what it cannot do."""

from __future__ import annotations

import socket
import time

import pytest
from pytest_httpserver import HTTPServer
from support import HEALTH

import leadgen_watchdog as wd


def config(url: str, **overrides: str) -> wd.Config:
    flags = {"url": url, **{key.replace("-", "_"): value for key, value in overrides.items()}}
    return wd.build_config(flags, {})


@pytest.mark.parametrize(
    ("status", "body", "flags", "reason"),
    [
        pytest.param(200, '{"status":"ok"}', {}, "ok", id="200-healthy"),
        pytest.param(204, "", {}, "ok", id="204-in-default-range"),
        pytest.param(503, "down", {}, "status", id="503"),
        pytest.param(404, "", {}, "status", id="404"),
        pytest.param(200, "degraded", {"expect-body": '"ok"'}, "body", id="body-lacks-text"),
        pytest.param(200, '{"status":"ok"}', {"expect-body": '"ok"'}, "ok", id="body-has-text"),
        pytest.param(503, "", {"expect-status": "200,503"}, "ok", id="503-listed-as-healthy"),
    ],
)
def test_status_and_body_classes(httpserver: HTTPServer, status: int, body: str, flags: dict, reason: str) -> None:
    """Each HTTP answer is judged against --expect-status and --expect-body."""
    httpserver.expect_request(HEALTH).respond_with_data(body, status=status)
    result = wd.http_probe(config(httpserver.url_for(HEALTH), **flags))
    assert (result.ok, result.reason, result.status) == (reason == "ok", reason, status)


def test_redirect_is_judged_not_followed(httpserver: HTTPServer) -> None:
    """A 302 fails the default range and its target is never fetched."""
    httpserver.expect_request(HEALTH).respond_with_data("", status=302, headers={"Location": "/elsewhere"})
    httpserver.expect_request("/elsewhere").respond_with_data("ok")
    result = wd.http_probe(config(httpserver.url_for(HEALTH)))
    assert (result.ok, result.reason, result.status) == (False, "status", 302)
    assert [request.path for request, _ in httpserver.log] == [HEALTH]
    accepted = wd.http_probe(config(httpserver.url_for(HEALTH), **{"expect-status": "200,300-302"}))
    assert accepted.ok


def test_request_headers(httpserver: HTTPServer) -> None:
    """The probe says who it is and asks the server to close the connection."""
    httpserver.expect_request(HEALTH).respond_with_data("ok")
    wd.http_probe(config(httpserver.url_for(HEALTH)))
    request, _ = httpserver.log[0]
    assert request.headers["User-Agent"] == f"leadgen-watchdog/{wd.VERSION}"
    assert request.headers["Connection"].lower() == "close"


def test_proxy_variables_are_ignored(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, free_port: int) -> None:
    """A dead proxy in the environment does not redirect a loopback check."""
    dead = f"http://127.0.0.1:{free_port}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    httpserver.expect_request(HEALTH).respond_with_data("ok")
    assert wd.http_probe(config(httpserver.url_for(HEALTH))).ok


def test_refused(free_port: int) -> None:
    """Nothing listening is 'refused'."""
    result = wd.http_probe(config(f"http://127.0.0.1:{free_port}{HEALTH}"))
    assert (result.ok, result.reason) == (False, "refused")


def test_silent_server_times_out(raw_server) -> None:
    """A server that accepts and never answers ends at the deadline as 'timeout'."""
    server = raw_server(lambda conn: time.sleep(5))
    start = time.monotonic()
    result = wd.http_probe(config(server.url, timeout="1"))
    assert result.reason == "timeout"
    assert time.monotonic() - start <= 2.0


def trickle(conn: socket.socket) -> None:
    conn.recv(4096)
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
        conn.sendall(bytes([byte]))
        time.sleep(0.5)


def test_trickling_server_ends_at_the_whole_request_deadline(raw_server) -> None:
    """One byte every 0.5 s keeps a socket timeout alive forever; the deadline still ends it."""
    server = raw_server(trickle)
    start = time.monotonic()
    result = wd.http_probe(config(server.url, timeout="2"))
    elapsed = time.monotonic() - start
    assert result.reason == "timeout"
    assert 1.9 <= elapsed <= 3.0


def reset_mid_response(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def garbage(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.sendall(b"\x00\x01SSH-2.0-not-http\r\n\r\n")


def truncated(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")


def closed_at_once(conn: socket.socket) -> None:
    conn.recv(4096)


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(reset_mid_response, id="reset"),
        pytest.param(garbage, id="garbage"),
        pytest.param(truncated, id="truncated-body"),
        pytest.param(closed_at_once, id="closed-without-answer"),
    ],
)
def test_broken_responses_are_protocol_failures(raw_server, handler) -> None:
    """Resets, non-HTTP bytes and truncated bodies are 'protocol'."""
    result = wd.http_probe(config(raw_server(handler).url, timeout="3"))
    assert (result.ok, result.reason) == (False, "protocol"), result


def endless(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    chunk = b"x" * 65536
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conn.sendall(chunk)


def test_endless_body_is_capped_not_read_forever(raw_server) -> None:
    """An endless 200 body is read up to the cap and judged on that, quickly."""
    server = raw_server(endless)
    start = time.monotonic()
    result = wd.http_probe(config(server.url, timeout="5"))
    assert result.ok and result.status == 200
    assert time.monotonic() - start < 2.0
    missing = wd.http_probe(config(server.url, timeout="5", **{"expect-body": "healthy"}))
    assert missing.reason == "body"


def test_excerpt_is_short_and_single_line(httpserver: HTTPServer) -> None:
    """The body excerpt for logs is one line and bounded."""
    httpserver.expect_request(HEALTH).respond_with_data("line one\nline two " + "y" * 500)
    result = wd.http_probe(config(httpserver.url_for(HEALTH)))
    assert "\n" not in result.body
    assert result.body.startswith("line one line two")
    assert len(result.body) == wd.EXCERPT_CHARS
