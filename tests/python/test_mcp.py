"""MCP consumers (SPEC §3 "MCP consumers") with the official MCP Python SDK as the client, and
fake backing MCP servers built with the same SDK."""

import asyncio
import collections
import importlib
import json
import threading
import time

import pytest
import uvicorn
from conftest import free_port
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

try:
    httpx = importlib.import_module("httpx2")
except ImportError:
    httpx = importlib.import_module("httpx")

try:
    from mcp.server.mcpserver import Context, MCPServer
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import Context, FastMCP as MCPServer


class FakeMcpServer:
    """An MCP server on a loopback port that counts HTTP requests and tool calls."""

    def __init__(self, name, tools):
        self.port = free_port()
        self.http_requests = 0
        self.calls = collections.Counter()
        srv = MCPServer(name)
        for tool_name, fn in tools.items():
            def make(tool_name=tool_name, fn=fn):
                def tool(text: str = "", a: int = 0, b: int = 0) -> str:
                    self.calls[tool_name] += 1
                    return fn(text=text, a=a, b=b)
                tool.__name__ = tool_name
                return tool
            srv.tool(name=tool_name)(make())

        @srv.tool(name="countdown")
        async def countdown(ctx: Context, a: int = 3) -> str:
            """Reports progress `a` times, a little apart, then answers."""
            self.calls["countdown"] += 1
            for i in range(1, a + 1):
                await ctx.report_progress(i, a, f"step {i}")
                await asyncio.sleep(0.05)
            return "done"

        @srv.prompt(name="greeting")
        def greeting(who: str = "you") -> str:
            self.calls["greeting"] += 1
            return f"Say hello to {who}."

        @srv.resource("file:///handbook.md", name="handbook")
        def handbook() -> str:
            self.calls["handbook"] += 1
            return f"{name} handbook"

        @srv.resource("file:///secret.md", name="secret")
        def secret() -> str:
            self.calls["secret"] += 1
            return "never shown"

        app = srv.streamable_http_app(host="127.0.0.1")

        async def counting(scope, receive, send):
            if scope["type"] == "http":
                self.http_requests += 1
            await app(scope, receive, send)

        self.server = uvicorn.Server(uvicorn.Config(counting, host="127.0.0.1", port=self.port, log_level="error"))
        threading.Thread(target=self.server.run, daemon=True).start()
        deadline = time.time() + 10
        while not self.server.started:
            assert time.time() < deadline, "fake MCP server did not start"
            time.sleep(0.02)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/mcp"

    def stop(self):
        self.server.should_exit = True


@pytest.fixture
def servers():
    alpha = FakeMcpServer("alpha", {"add": lambda a, b, **_: str(a + b), "secret_tool": lambda **_: "should never run"})
    beta = FakeMcpServer("beta", {"echo": lambda text, **_: text, "shout": lambda text, **_: text.upper()})
    yield alpha, beta
    alpha.stop()
    beta.stop()


def mcp_consumer(gw, registries, toolkit, fail_mode="closed", gid=None):
    """An mcp consumer with an API key over the given `mcp` registries (name → url)."""
    gid = gid or gw.create("/v1/gateways", {"name": f"g{free_port()}"})["id"]
    ids = {name: gw.create(f"/v1/gateways/{gid}/registries", {"name": name, "provider": "mcp", "base_url": url,
                                                               "timeouts": {"first_byte_ms": 3000}})["id"]
           for name, url in registries.items()}
    auth = gw.create(f"/v1/gateways/{gid}/auths", {"name": f"k{free_port()}", "type": "api_key"})
    kit = [{**{k: v for k, v in entry.items() if k != "registry"}, "registry_id": ids[entry["registry"]]} for entry in toolkit]
    c = gw.create(f"/v1/gateways/{gid}/consumers", {"name": f"tools{free_port()}", "type": "mcp", "auth_ids": [auth["id"]],
                                                     "toolkit": kit, "fail_mode": fail_mode})
    return f"http://127.0.0.1:{gw.proxy_port}/{c['slug']}/mcp", auth["key"], gid


async def with_session(url, key, fn):
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await fn(session)


TOOLKIT = [{"registry": "alpha", "tool": "add", "expose_as": "sum"}, {"registry": "beta", "tool": "echo"}]


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


def test_the_toolkit_is_the_whole_world(gateway, servers):
    alpha, beta = servers
    url, key, _ = mcp_consumer(gateway, {"alpha": alpha.url, "beta": beta.url}, TOOLKIT)

    async def scenario(s):
        tools = await s.list_tools()
        names = sorted(t.name for t in tools.tools)
        summed = await s.call_tool("sum", {"a": 2, "b": 3})
        echoed = await s.call_tool("echo", {"text": "through the gateway"})
        refused = []
        for name in ["secret_tool", "add", "shout"]:
            try:
                r = await s.call_tool(name, {"text": "x"})
                refused.append(bool(getattr(r, "is_error", getattr(r, "isError", False))))
            except Exception:
                refused.append(True)
        return names, text_of(summed), text_of(echoed), refused

    names, summed, echoed, refused = asyncio.run(with_session(url, key, scenario))
    assert names == ["echo", "sum"], "tools/list is exactly the toolkit, renamed"
    assert summed == "5" and echoed == "through the gateway"
    assert refused == [True, True, True]
    assert alpha.calls == {"add": 1} and beta.calls == {"echo": 1}, "unlisted tools never reach an upstream"


def test_bad_credentials_and_foreign_sessions(gateway, servers):
    alpha, beta = servers
    url_a, key_a, gid = mcp_consumer(gateway, {"alpha": alpha.url, "beta": beta.url}, TOOLKIT)
    url_b, key_b, _ = mcp_consumer(gateway, {"alpha2": alpha.url}, [{"registry": "alpha2", "tool": "add"}], gid=gid)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"accept": "application/json, text/event-stream"}
    before = alpha.http_requests + beta.http_requests
    with httpx.Client(timeout=30) as h:
        r = h.post(url_a, json=init, headers={**headers, "authorization": "Bearer sy-not-a-key"})
        assert r.status_code == 401
        r = h.post(url_a, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers)
        assert r.status_code == 401
        assert alpha.http_requests + beta.http_requests == before, "no upstream contact before authentication"
        r = h.post(url_a, json=init, headers={**headers, "authorization": f"Bearer {key_a}"})
        assert r.status_code == 200
        sid = r.headers["mcp-session-id"]
        assert r.json()["result"]["protocolVersion"] == "2025-06-18"
        # Consumer B cannot use A's session, even with its own valid key.
        r = h.post(url_b, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
                   headers={**headers, "authorization": f"Bearer {key_b}", "mcp-session-id": sid})
        assert r.status_code == 404
        # A can, and a batch gets a batch back; unknown methods are errors, never forwarded.
        r = h.post(url_a, json=[{"jsonrpc": "2.0", "id": 4, "method": "ping"},
                                {"jsonrpc": "2.0", "id": 5, "method": "sampling/createMessage"},
                                {"jsonrpc": "2.0", "method": "notifications/initialized"}],
                   headers={**headers, "authorization": f"Bearer {key_a}", "mcp-session-id": sid})
        assert r.status_code == 200
        out = {m["id"]: m for m in r.json()}
        assert out[4]["result"] == {} and out[5]["error"]["code"] == -32601
        r = h.delete(url_a, headers={"authorization": f"Bearer {key_a}", "mcp-session-id": sid})
        assert r.status_code == 200
        r = h.post(url_a, json={"jsonrpc": "2.0", "id": 6, "method": "ping"},
                   headers={**headers, "authorization": f"Bearer {key_a}", "mcp-session-id": sid})
        assert r.status_code == 404, "an ended session is gone"


def test_fail_mode_closed_and_open_with_one_server_down(gateway, servers):
    alpha, _ = servers
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    kit = [{"registry": "alpha", "tool": "add", "expose_as": "sum"}, {"registry": "down", "tool": "echo"}]
    closed_url, closed_key, gid = mcp_consumer(gateway, {"alpha": alpha.url, "down": dead}, kit, "closed")

    async def list_names(s):
        return sorted(t.name for t in (await s.list_tools()).tools)

    with pytest.raises(Exception) as e:
        asyncio.run(with_session(closed_url, closed_key, list_names))
    assert "backing MCP server `down` is unavailable" in repr(e.value), "the MCP error reaches the client"
    open_url, open_key, _ = mcp_consumer(gateway, {"alpha": alpha.url, "down": dead}, kit, "open")
    assert asyncio.run(with_session(open_url, open_key, list_names)) == ["sum"]

    async def call_live(s):
        return text_of(await s.call_tool("sum", {"a": 20, "b": 22}))

    assert asyncio.run(with_session(open_url, open_key, call_live)) == "42"
    deadline = time.time() + 3
    while True:  # the log line follows the streamed answer
        logs = [json.loads(l) for l in gateway.logs().splitlines() if l.startswith("{")]
        calls = [l for l in logs if l.get("target") == "switchyard::mcp" and l.get("message") == "tool call"]
        if calls or time.time() > deadline:
            break
        time.sleep(0.02)
    assert calls and calls[-1]["tool"] == "sum" and calls[-1]["outcome"] == "ok"


def test_tool_results_stream_back_with_progress(gateway, servers):
    alpha, beta = servers
    url, key, _ = mcp_consumer(gateway, {"alpha": alpha.url, "beta": beta.url},
                               TOOLKIT + [{"registry": "alpha", "tool": "countdown", "expose_as": "steps"}])
    progress = []

    async def cb(p, total, message):
        progress.append((p, total))

    async def scenario(s):
        return text_of(await s.call_tool("steps", {"a": 3}, progress_callback=cb))

    assert asyncio.run(with_session(url, key, scenario)) == "done"
    assert progress == [(1, 3), (2, 3), (3, 3)], "the backing server's progress reached the caller"
    assert alpha.calls["countdown"] == 1


def test_rate_limits_apply_to_tool_calls_and_toolkit_collisions_are_refused(gateway, servers):
    alpha, beta = servers
    url, key, gid = mcp_consumer(gateway, {"alpha": alpha.url, "beta": beta.url}, TOOLKIT)
    pol = gateway.create(f"/v1/gateways/{gid}/policies", {"name": "tools-rpm", "type": "rate_limit",
                                                          "config": {"requests_per_minute": 2}})
    _, consumers = gateway.admin("GET", f"/v1/gateways/{gid}/consumers")
    cid = consumers["items"][0]["id"]
    assert gateway.admin("PUT", f"/v1/gateways/{gid}/consumers/{cid}/policies/{pol['id']}")[0] == 200

    async def scenario(s):
        out = []
        for i in range(3):
            try:
                out.append(text_of(await s.call_tool("echo", {"text": f"n{i}"})))
            except Exception as e:
                out.append(f"refused: {e}")
        return out

    out = asyncio.run(with_session(url, key, scenario))
    assert out[:2] == ["n0", "n1"] and out[2].startswith("refused") and "rate limit" in out[2]
    assert beta.calls["echo"] == 2, "a refused call never reaches the upstream"
    # Two entries exposing the same tool name: refused at the admin API.
    _, regs = gateway.admin("GET", f"/v1/gateways/{gid}/registries")
    ids = {r["name"]: r["id"] for r in regs["items"]}
    status, err = gateway.admin("POST", f"/v1/gateways/{gid}/consumers", {
        "name": "clash", "type": "mcp", "toolkit": [{"registry_id": ids["alpha"], "tool": "add", "expose_as": "x"},
                                                    {"registry_id": ids["beta"], "tool": "echo", "expose_as": "x"}]})
    assert status == 400 and err["error"]["field"] == "toolkit[1].expose_as"


def test_prompts_and_resources_come_from_the_toolkit_only(gateway, servers):
    alpha, beta = servers
    kit = TOOLKIT + [{"registry": "alpha", "prompt": "greeting", "expose_as": "hello"},
                     {"registry": "beta", "resource": "file:///handbook.md", "expose_as": "file:///beta-handbook.md"}]
    url, key, _ = mcp_consumer(gateway, {"alpha": alpha.url, "beta": beta.url}, kit)

    async def scenario(s):
        prompts = sorted(p.name for p in (await s.list_prompts()).prompts)
        resources = sorted(str(r.uri) for r in (await s.list_resources()).resources)
        got = await s.get_prompt("hello", {"who": "Ada"})
        read = await s.read_resource("file:///beta-handbook.md")
        refused = []
        for call in [lambda: s.get_prompt("greeting", {}), lambda: s.read_resource("file:///secret.md"),
                     lambda: s.read_resource("file:///handbook.md")]:
            try:
                await call()
                refused.append(False)
            except Exception:
                refused.append(True)
        return prompts, resources, got, read, refused

    prompts, resources, got, read, refused = asyncio.run(with_session(url, key, scenario))
    assert prompts == ["hello"] and resources == ["file:///beta-handbook.md"]
    assert "Say hello to Ada." in json.dumps(got.model_dump(mode="json"))
    assert read.contents[0].text == "beta handbook"
    assert refused == [True, True, True], "entries outside the toolkit do not exist"
    assert alpha.calls["greeting"] == 1 and beta.calls["handbook"] == 1
    assert alpha.calls["secret"] == 0 and beta.calls["secret"] == 0
