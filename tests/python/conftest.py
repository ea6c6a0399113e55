"""Fixtures for testing switchyard from the outside with the official SDKs.

`gateway` starts the real binary (SWITCHYARD_BIN, default target/debug/switchyard) on free
loopback ports with a temporary store; `fake_upstream` is a scriptable OpenAI-format provider
that records what it receives.
"""

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "py-admin-token-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, extra_config="", env=None, tls=None, upstream_ca=None, h2c=False):
        """`tls`: (cert, key) for an HTTPS listener on `self.tls_port`; `upstream_ca`: CA file
        trusted for provider TLS; `h2c`: accept HTTP/2 with prior knowledge on the cleartext
        listener."""
        self.dir = tempfile.TemporaryDirectory()
        self.proxy_port = free_port()
        self.admin_port = free_port()
        self.tls_port = free_port()
        cfg = Path(self.dir.name) / "switchyard.yaml"
        tls_cfg = (f"  tls: {{listen: \"127.0.0.1:{self.tls_port}\", cert: {tls[0]}, key: {tls[1]}}}\n"
                   if tls else "")
        upstream_cfg = f"upstream: {{ca_file: {upstream_ca}}}\n" if upstream_ca else ""
        cfg.write_text(
            f"data_dir: {self.dir.name}/data\n"
            f"proxy:\n  listen: [\"127.0.0.1:{self.proxy_port}\"]\n" + ("  h2c: true\n" if h2c else "") +
            tls_cfg + upstream_cfg +
            ""
            f"admin:\n  listen: \"127.0.0.1:{self.admin_port}\"\n  token: \"{ADMIN_TOKEN}\"\n"
            "shutdown: {grace_period_s: 1, shutdown_timeout_s: 1}\n" + extra_config
        )
        binary = os.environ.get("SWITCHYARD_BIN", str(ROOT / "target" / "debug" / "switchyard"))
        self.log = open(Path(self.dir.name) / "gateway.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "run", "--config", str(cfg)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/healthz", timeout=1)
                urllib.request.urlopen(f"http://127.0.0.1:{self.proxy_port}/readyz", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("switchyard did not start: " + self.logs())
                time.sleep(0.05)

    def logs(self):
        time.sleep(0.25)  # the gateway writes its log buffer out every 100 ms
        self.log.flush()
        return (Path(self.dir.name) / "gateway.log").read_text(errors="replace")

    def admin(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read()
                return r.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def create(self, path, body):
        status, out = self.admin("POST", path, body)
        assert status == 201, out
        return out

    def consumer(self, registries, **extra):
        """A gateway entity, the given registries, one API key and a consumer using them.

        Returns (base_url for the OpenAI SDK, api key, slug, gateway id)."""
        gid = self.create("/v1/gateways", {"name": f"g{free_port()}"})["id"]
        ids = [self.create(f"/v1/gateways/{gid}/registries", r)["id"] for r in registries]
        auth = self.create(f"/v1/gateways/{gid}/auths", {"name": "k", "type": "api_key"})
        body = {"name": "app", "auth_ids": [auth["id"]], "registries": [{"id": i} for i in ids]}
        body.update(extra)
        c = self.create(f"/v1/gateways/{gid}/consumers", body)
        return f"http://127.0.0.1:{self.proxy_port}/{c['slug']}/v1", auth["key"], c["slug"], gid

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        self.dir.cleanup()


@pytest.fixture
def gateway():
    gw = Gateway()
    yield gw
    gw.stop()


class FakeUpstream:
    """A provider. `handler(path, headers, body) -> reply`; a reply is ("json", status, obj),
    ("sse", [event strings], delay_seconds), ("sse_cut", events, delay) which drops the
    connection after the events, or ("raw", status, {header: value}, [bytes chunks]).
    `raw_bodies` keeps each request body's exact bytes."""

    def __init__(self, handler, tls=None):
        self.requests = []
        self.raw_bodies = []
        self.last_event_sent_at = None
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                raw_body = self.rfile.read(n)
                body = json.loads(raw_body or b"null")
                fake.raw_bodies.append(raw_body)
                fake.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                reply = handler(self.path, self.headers, body)
                if reply[0] == "raw":
                    _, status, headers, parts = reply
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for part in parts:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if reply[0] == "json":
                    data = json.dumps(reply[2]).encode()
                    self.send_response(reply[1])
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                kind, events, delay = reply
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i, e in enumerate(events):
                    if i and delay:
                        time.sleep(delay)
                    if i == len(events) - 1:
                        fake.last_event_sent_at = time.monotonic()
                    raw = e.encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
                    self.wfile.flush()
                if kind == "sse_cut":
                    # End the connection without the final chunk: a cut stream.
                    self.close_connection = True
                    return
                self.wfile.write(b"0\r\n\r\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.scheme = "http"
        if tls:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls[0], tls[1])
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def registry(self, name="oa", **extra):
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        r = {"name": name, "provider": "openai", "base_url": f"{self.scheme}://{host}:{self.port}/v1",
             "auth": {"api_key": "sk-upstream-secret-000111"}}
        r.update(extra)
        return r

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def fake_upstream():
    started = []

    def start(handler, tls=None):
        f = FakeUpstream(handler, tls=tls)
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()


def completion(model, text, prompt_tokens=5, completion_tokens=2):
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def chunks(model, pieces, usage=None):
    def c(delta, finish=None):
        return "data: " + json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

    out = [c({"role": "assistant", "content": ""})] + [c({"content": p}) for p in pieces] + [c({}, "stop")]
    if usage:
        out.append("data: " + json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                          "created": 1, "model": model, "choices": [], "usage": usage}) + "\n\n")
    return out + ["data: [DONE]\n\n"]
