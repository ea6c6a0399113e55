"""Translation (SPEC §3 step 8) end to end with the official SDKs: the `openai` SDK against a
fake Anthropic provider, and the `anthropic` SDK against a fake OpenAI provider. Each SDK's own
parser accepts every event, and text, tool calls and usage equal what the provider sent."""

import json

import anthropic
import openai
import pytest
from conftest import chunks


def sse(name, data):
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def anthropic_message(text=None, tool=None):
    content = []
    if text:
        content.append({"type": "text", "text": text})
    if tool:
        content.append({"type": "tool_use", "id": "toolu_1", "name": tool[0], "input": tool[1]})
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": content,
            "stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 0}}


def anthropic_events(pieces, tool=None):
    out = [sse("message_start", {"type": "message_start", "message": {**anthropic_message(), "content": [],
                                                                      "usage": {"input_tokens": 11, "output_tokens": 1}}}),
           sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
           sse("ping", {"type": "ping"})]
    out += [sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})
            for p in pieces]
    out.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if tool:
        out.append(sse("content_block_start", {"type": "content_block_start", "index": 1,
                                               "content_block": {"type": "tool_use", "id": "toolu_1", "name": tool[0], "input": {}}}))
        args = json.dumps(tool[1])
        for part in ["", args[: len(args) // 2], args[len(args) // 2:]]:
            out.append(sse("content_block_delta", {"type": "content_block_delta", "index": 1,
                                                   "delta": {"type": "input_json_delta", "partial_json": part}}))
        out.append(sse("content_block_stop", {"type": "content_block_stop", "index": 1}))
    out.append(sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use" if tool else "end_turn"},
                                     "usage": {"output_tokens": 9}}))
    out.append(sse("message_stop", {"type": "message_stop"}))
    return out


def test_openai_sdk_against_an_anthropic_provider(gateway, fake_upstream):
    def handler(path, headers, body):
        tool = ("get_weather", {"city": "Paris"}) if body.get("tools") else None
        if body.get("stream"):
            return ("sse", anthropic_events(["Hel", "lo ", "wörld"], tool), 0)
        return ("json", 200, anthropic_message("Hello wörld", tool))

    fake = fake_upstream(handler)
    base, key, _, _ = gateway.consumer([{"name": "claude", "provider": "anthropic", "base_url": f"http://127.0.0.1:{fake.port}",
                                         "auth": {"api_key": "sk-ant-secret-0000"}, "options": {"default_max_tokens": 321}}])
    c = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    out = c.chat.completions.create(model="claude-x", messages=[{"role": "system", "content": "be kind"},
                                                               {"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == "Hello wörld"
    assert out.choices[0].finish_reason == "stop"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (13, 7)
    path, headers, sent = fake.requests[0]
    assert path == "/v1/messages" and headers["x-api-key"] == "sk-ant-secret-0000" and headers["anthropic-version"]
    assert sent["system"] == [{"type": "text", "text": "be kind"}] and sent["max_tokens"] == 321
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    out = c.chat.completions.create(model="claude-x", messages=[{"role": "user", "content": "weather?"}], tools=tools)
    call = out.choices[0].message.tool_calls[0]
    assert out.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("toolu_1", "get_weather", {"city": "Paris"})

    text, usage = "", None
    for ch in c.chat.completions.create(model="claude-x", messages=[{"role": "user", "content": "hi"}], stream=True,
                                        stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].delta.content:
            text += ch.choices[0].delta.content
        if ch.usage:
            usage = ch.usage
    assert text == "Hello wörld" and usage.completion_tokens == 9 and usage.prompt_tokens == 11

    # The SDK's stream helper accumulates streamed tool calls.
    with c.chat.completions.stream(model="claude-x", messages=[{"role": "user", "content": "weather?"}], tools=tools) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert final.choices[0].message.content == "Hello wörld"


def test_anthropic_sdk_against_an_openai_provider(gateway, fake_upstream):
    def handler(path, headers, body):
        wants_tool = bool(body.get("tools"))
        if body.get("stream"):
            evs = chunks(body["model"], ["Bon", "jour"], usage={"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16})
            if wants_tool:
                tool_chunk = "data: " + json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "m",
                    "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                        "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}]}, "finish_reason": None}]}) + "\n\n"
                evs.insert(3, tool_chunk)
                evs = [e.replace('"finish_reason": "stop"', '"finish_reason": "tool_calls"') for e in evs]
            return ("sse", evs, 0)
        msg = {"role": "assistant", "content": "Bonjour"}
        finish = "stop"
        if wants_tool:
            msg["tool_calls"] = [{"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}]
            finish = "tool_calls"
        return ("json", 200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                              "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                              "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}})

    fake = fake_upstream(handler)
    base, key, slug, _ = gateway.consumer([fake.registry()])
    c = anthropic.Anthropic(base_url=f"http://127.0.0.1:{gateway.proxy_port}/{slug}", api_key=key, max_retries=0)
    m = c.messages.create(model="gpt-4o", max_tokens=100, system="terse", messages=[{"role": "user", "content": "salut"}])
    assert m.content[0].text == "Bonjour" and m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (12, 4)
    path, headers, sent = fake.requests[0]
    assert path == "/v1/chat/completions"
    assert sent["messages"] == [{"role": "system", "content": "terse"}, {"role": "user", "content": "salut"}]
    assert key not in json.dumps(headers)

    tools = [{"name": "lookup", "description": "d", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]
    m = c.messages.create(model="gpt-4o", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "find x"}])
    tool_use = [b for b in m.content if b.type == "tool_use"][0]
    assert (tool_use.id, tool_use.name, tool_use.input, m.stop_reason) == ("call_9", "lookup", {"q": "x"}, "tool_use")

    with c.messages.stream(model="gpt-4o", max_tokens=100, messages=[{"role": "user", "content": "salut"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Bonjour" and final.usage.output_tokens == 4 and final.stop_reason == "end_turn"

    with c.messages.stream(model="gpt-4o", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "find x"}]) as s:
        final = s.get_final_message()
    tool_use = [b for b in final.content if b.type == "tool_use"][0]
    assert (tool_use.name, tool_use.input, final.stop_reason) == ("lookup", {"q": "x"}, "tool_use")

    # Errors come back in Anthropic's shape, so the SDK raises the right class.
    bad = anthropic.Anthropic(base_url=f"http://127.0.0.1:{gateway.proxy_port}/{slug}", api_key="sy-wrong", max_retries=0)
    try:
        bad.messages.create(model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        raise AssertionError("no error")
    except anthropic.AuthenticationError:
        pass


def gemini_reply(text=None, call=None, finish="STOP"):
    parts = []
    if text is not None:
        parts.append({"text": text})
    if call:
        parts.append({"functionCall": {"name": call[0], "args": call[1]}})
    out = {"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}], "responseId": "r1"}
    if finish:
        out["candidates"][0]["finishReason"] = finish
        out["usageMetadata"] = {"promptTokenCount": 8, "candidatesTokenCount": 5, "totalTokenCount": 13}
    return out


def gemini_handler(path, headers, body):
    """A Gemini provider saying "Guten Tag" (in two pieces when streamed), calling `lookup`
    when the request has tools."""
    tool = ("lookup", {"q": "x"}) if body.get("tools") else None
    if "streamGenerateContent" in path:
        events = [gemini_reply("Gu", None, None), gemini_reply("ten Tag", None, None)]
        if tool:
            events.append(gemini_reply(None, tool, None))
        events.append(gemini_reply("", None, "STOP"))
        return ("sse", ["data: " + json.dumps(e) + "\r\n\r\n" for e in events], 0)
    return ("json", 200, gemini_reply("Guten Tag", tool))


def test_openai_sdk_against_a_gemini_provider(gateway, fake_upstream):
    fake = fake_upstream(gemini_handler)
    base, key, _, _ = gateway.consumer([{"name": "gem", "provider": "gemini", "base_url": f"http://127.0.0.1:{fake.port}",
                                         "auth": {"api_key": "gemini-secret-key-9999"}}])
    c = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    out = c.chat.completions.create(model="gemini-x", messages=[{"role": "system", "content": "kurz"}, {"role": "user", "content": "hallo"}])
    assert out.choices[0].message.content == "Guten Tag" and out.usage.total_tokens == 13
    path, headers, sent = fake.requests[0]
    assert path == "/v1beta/models/gemini-x:generateContent" and headers["x-goog-api-key"] == "gemini-secret-key-9999"
    assert sent["systemInstruction"] == {"parts": [{"text": "kurz"}]}
    assert sent["contents"] == [{"role": "user", "parts": [{"text": "hallo"}]}]

    text, usage = "", None
    for ch in c.chat.completions.create(model="gemini-x", messages=[{"role": "user", "content": "hallo"}], stream=True,
                                        stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].delta.content:
            text += ch.choices[0].delta.content
        if ch.usage:
            usage = ch.usage
    assert text == "Guten Tag" and usage.total_tokens == 13
    assert fake.requests[1][0] == "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"

    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with c.chat.completions.stream(model="gemini-x", messages=[{"role": "user", "content": "find"}], tools=tools) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("lookup", {"q": "x"})
    assert final.choices[0].finish_reason == "tool_calls", "a Gemini STOP after a function call is tool_calls"


def test_anthropic_sdk_against_a_gemini_provider(gateway, fake_upstream):
    fake = fake_upstream(gemini_handler)
    _, key, slug, _ = gateway.consumer([{"name": "gem", "provider": "gemini", "base_url": f"http://127.0.0.1:{fake.port}",
                                         "auth": {"api_key": "gemini-secret-key-9999"}}])
    a = anthropic.Anthropic(base_url=f"http://127.0.0.1:{gateway.proxy_port}/{slug}", api_key=key, max_retries=0)
    m = a.messages.create(model="gemini-x", max_tokens=30, system="kurz", messages=[{"role": "user", "content": "hallo"}])
    assert m.content[0].text == "Guten Tag" and m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (8, 5)
    sent = fake.requests[0][2]
    assert sent["systemInstruction"] == {"parts": [{"text": "kurz"}]}
    assert sent["generationConfig"] == {"maxOutputTokens": 30}

    tools = [{"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]
    with a.messages.stream(model="gemini-x", max_tokens=30, tools=tools, messages=[{"role": "user", "content": "find"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    tool_use = [b for b in final.content if b.type == "tool_use"][0]
    assert text == "Guten Tag"
    assert (tool_use.name, tool_use.input, final.stop_reason) == ("lookup", {"q": "x"}, "tool_use")
    assert final.usage.output_tokens == 5

    # A Gemini error reaches the Anthropic SDK as its own error class.
    fake.stop()
    def failing(path, headers, body):
        return ("json", 429, {"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}})
    bad = fake_upstream(failing)
    _, key2, slug2, _ = gateway.consumer([{"name": "gem2", "provider": "gemini", "base_url": f"http://127.0.0.1:{bad.port}",
                                           "auth": {"api_key": "gemini-secret-key-9999"}}])
    a2 = anthropic.Anthropic(base_url=f"http://127.0.0.1:{gateway.proxy_port}/{slug2}", api_key=key2, max_retries=0)
    with pytest.raises(anthropic.RateLimitError, match="Resource has been exhausted"):
        a2.messages.create(model="gemini-x", max_tokens=30, messages=[{"role": "user", "content": "hallo"}])
