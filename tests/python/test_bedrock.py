"""Bedrock (SPEC §3 step 8, protocols.md §5) end to end: the `openai` and `anthropic` SDKs
against a fake Bedrock Converse / ConverseStream upstream that checks every request's SigV4
signature with botocore's own signer and answers in AWS's binary event-stream framing."""

import json
import struct
import zlib

import anthropic
import openai
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AKID, SECRET, TOKEN, REGION = "AKIDTESTBEDROCK", "bedrock-secret-key-0123456789", "session-token-xyz", "eu-west-3"
MODEL = "us.anthropic.claude-3-haiku-20240307-v1:0"


def frame(kind, payload, message_type="event"):
    """One event-stream frame, written independently of the gateway's encoder."""
    key = ":event-type" if message_type == "event" else ":exception-type"
    headers = b""
    for k, v in ((key, kind), (":content-type", "application/json"), (":message-type", message_type)):
        headers += bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode()
    body = json.dumps(payload).encode()
    prelude = struct.pack(">II", 12 + len(headers) + len(body) + 4, len(headers))
    msg = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + body
    return msg + struct.pack(">I", zlib.crc32(msg))


def expected_signature(path, headers, body):
    """The signature botocore computes for the request as the fake received it."""
    signed = headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    req = AWSRequest(method="POST", url=f"http://{headers['host']}{path}", data=body,
                     headers={h: headers[h] for h in signed})
    req.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(Credentials(AKID, SECRET, TOKEN), "bedrock", REGION)
    return signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)


def converse_reply(text, tool=None):
    content = [{"text": text}] if text else []
    if tool:
        content.append({"toolUse": {"toolUseId": "tooluse_1", "name": tool[0], "input": tool[1]}})
    return {"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": "tool_use" if tool else "end_turn",
            "usage": {"inputTokens": 10, "outputTokens": 6, "totalTokens": 16, "cacheReadInputTokens": 3},
            "metrics": {"latencyMs": 12}}


def converse_stream(pieces, tool=None):
    out = [frame("messageStart", {"role": "assistant"})]
    out += [frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}, "p": "abcdef"}) for p in pieces]
    out.append(frame("contentBlockStop", {"contentBlockIndex": 0}))
    if tool:
        out.append(frame("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": tool[0]}}}))
        args = json.dumps(tool[1])
        for part in [args[:5], args[5:]]:
            out.append(frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": part}}}))
        out.append(frame("contentBlockStop", {"contentBlockIndex": 1}))
    out.append(frame("messageStop", {"stopReason": "tool_use" if tool else "end_turn"}))
    out.append(frame("metadata", {"usage": {"inputTokens": 10, "outputTokens": 6, "totalTokens": 16}, "metrics": {"latencyMs": 5}}))
    # Frames span and share network writes: cut the whole byte string into odd pieces.
    data = b"".join(out)
    return [data[i:i + 7] for i in range(0, len(data), 7)]


@pytest.fixture
def bedrock(gateway, fake_upstream):
    def handler(path, headers, body):
        tool = ("get_weather", {"city": "Lyon"}) if body.get("toolConfig") else None
        if path.endswith("/converse-stream"):
            return ("raw", 200, {"content-type": "application/vnd.amazon.eventstream"},
                    converse_stream(["Bon", "jour ", "à tous"], tool))
        if body["messages"][-1]["content"][0].get("text") == "throttle me":
            return ("raw", 429, {"content-type": "application/json", "x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"},
                    [json.dumps({"message": "Too many requests, please wait"}).encode()])
        return ("json", 200, converse_reply("Bonjour à tous", tool))

    fake = fake_upstream(handler)
    registry = {"name": "bedrock", "provider": "bedrock", "base_url": f"http://127.0.0.1:{fake.port}",
                "options": {"region": REGION, "access_key_id": AKID, "secret_access_key": SECRET, "session_token": TOKEN}}
    base, key, slug, _ = gateway.consumer([registry])
    return fake, base, key, slug


def check_signed(fake):
    for (path, headers, _), raw in zip(fake.requests, fake.raw_bodies):
        assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AKID}/"), headers["authorization"]
        assert f"/{REGION}/bedrock/aws4_request" in headers["authorization"]
        assert headers["x-amz-security-token"] == TOKEN
        assert headers["authorization"].endswith("Signature=" + expected_signature(path, headers, raw))


def test_openai_sdk_against_bedrock(bedrock, gateway):
    fake, base, key, _ = bedrock
    c = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    out = c.chat.completions.create(model=MODEL, max_tokens=50, temperature=0.2, stop=["END"],
                                    messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "salut"}])
    assert out.choices[0].message.content == "Bonjour à tous" and out.choices[0].finish_reason == "stop"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.prompt_tokens_details.cached_tokens) == (13, 6, 3)
    path, _, sent = fake.requests[0]
    # The model id is one path segment; its colon is percent-encoded on the wire.
    assert path == "/model/us.anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    assert sent == {"messages": [{"role": "user", "content": [{"text": "salut"}]}], "system": [{"text": "be brief"}],
                    "inferenceConfig": {"maxTokens": 50, "temperature": 0.2, "stopSequences": ["END"]}}

    tools = [{"type": "function", "function": {"name": "get_weather", "description": "w",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    out = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "weather?"}], tools=tools, tool_choice="required")
    call = out.choices[0].message.tool_calls[0]
    assert out.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("tooluse_1", "get_weather", {"city": "Lyon"})
    assert fake.requests[1][2]["toolConfig"] == {"tools": [{"toolSpec": {"name": "get_weather", "description": "w",
        "inputSchema": {"json": tools[0]["function"]["parameters"]}}}], "toolChoice": {"any": {}}}

    # The tool result goes back as a toolResult block in a user turn.
    c.chat.completions.create(model=MODEL, messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "tooluse_1", "type": "function",
                                                                "function": {"name": "get_weather", "arguments": "{\"city\": \"Lyon\"}"}}]},
        {"role": "tool", "tool_call_id": "tooluse_1", "content": "sunny"}])
    assert fake.requests[2][2]["messages"][1:] == [
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Lyon"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "sunny"}], "status": "success"}}]}]

    text, usage = "", None
    for ch in c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "salut"}], stream=True,
                                        stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].delta.content:
            text += ch.choices[0].delta.content
        if ch.usage:
            usage = ch.usage
    assert text == "Bonjour à tous" and (usage.prompt_tokens, usage.completion_tokens) == (10, 6)
    assert fake.requests[3][0].endswith("%3A0/converse-stream")

    with c.chat.completions.stream(model=MODEL, messages=[{"role": "user", "content": "weather?"}], tools=tools) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("tooluse_1", "get_weather", {"city": "Lyon"})
    assert final.choices[0].finish_reason == "tool_calls" and final.choices[0].message.content == "Bonjour à tous"

    check_signed(fake)
    assert SECRET not in gateway.logs() and TOKEN not in gateway.logs()


def test_bedrock_errors_reach_each_sdk_in_its_own_shape(bedrock, gateway):
    fake, base, key, slug = bedrock
    c = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "throttle me"}])
    assert e.value.body["message"] == "Too many requests, please wait"
    assert e.value.body["type"] == "ThrottlingException"

    a = anthropic.Anthropic(base_url=f"http://127.0.0.1:{gateway.proxy_port}/{slug}", api_key=key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as e:
        a.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "throttle me"}])
    assert "Too many requests" in str(e.value)


def test_a_bedrock_exception_mid_stream_makes_the_sdk_raise(gateway, fake_upstream):
    def handler(path, headers, body):
        frames = [frame("messageStart", {"role": "assistant"}),
                  frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "partial"}}),
                  frame("modelStreamErrorException", {"message": "model crashed"}, "exception")]
        return ("raw", 200, {"content-type": "application/vnd.amazon.eventstream"}, frames)

    fake = fake_upstream(handler)
    base, key, _, _ = gateway.consumer([{"name": "br", "provider": "bedrock", "base_url": f"http://127.0.0.1:{fake.port}",
                                         "auth": {"api_key": "bedrock-api-key-abcdef"}, "options": {"region": REGION}}])
    c = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    text = ""
    with pytest.raises(openai.APIError, match="model crashed"):
        for ch in c.chat.completions.create(model="amazon.nova-lite-v1:0", messages=[{"role": "user", "content": "x"}], stream=True):
            if ch.choices and ch.choices[0].delta.content:
                text += ch.choices[0].delta.content
    assert text == "partial"
    # Without access keys, a Bedrock API key goes as a bearer token.
    assert fake.requests[0][1]["authorization"] == "Bearer bedrock-api-key-abcdef"


def test_anthropic_sdk_against_bedrock(bedrock, gateway):
    fake, _, key, slug = bedrock
    a = anthropic.Anthropic(base_url=f"http://127.0.0.1:{gateway.proxy_port}/{slug}", api_key=key, max_retries=0)
    m = a.messages.create(model=MODEL, max_tokens=64, system="terse", messages=[{"role": "user", "content": "salut"}])
    assert m.content[0].text == "Bonjour à tous" and m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens, m.usage.cache_read_input_tokens) == (10, 6, 3)
    assert fake.requests[0][2]["system"] == [{"text": "terse"}]
    assert fake.requests[0][2]["inferenceConfig"]["maxTokens"] == 64

    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    with a.messages.stream(model=MODEL, max_tokens=64, tools=tools, messages=[{"role": "user", "content": "weather?"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    tool_use = [b for b in final.content if b.type == "tool_use"][0]
    assert text == "Bonjour à tous"
    assert (tool_use.id, tool_use.name, tool_use.input, final.stop_reason) == ("tooluse_1", "get_weather", {"city": "Lyon"}, "tool_use")
    assert final.usage.output_tokens == 6
    check_signed(fake)
