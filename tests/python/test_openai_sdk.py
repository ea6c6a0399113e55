"""The official `openai` SDK against switchyard (SPEC §3): chat, streaming, embeddings, models,
and the exception class for each error status."""

import time

import openai
import pytest
from conftest import chunks, completion

MSG = [{"role": "user", "content": "Hello"}]


def client(base_url, key):
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)


def test_chat_completion_through_an_openai_upstream(gateway, fake_upstream):
    fake = fake_upstream(lambda path, h, body: ("json", 200, completion(body["model"], "Hi there")))
    base, key, _, _ = gateway.consumer([fake.registry(models=["gpt-4o"])])
    c = client(base, key)
    resp = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
    out = resp.parse()
    assert out.choices[0].message.content == "Hi there"
    assert out.usage.total_tokens == 7
    assert resp.headers["x-switchyard-registry"] == "oa"
    assert resp.headers["x-switchyard-model"] == "openai/gpt-4o"
    path, headers, body = fake.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-upstream-secret-000111"
    assert key not in str(headers) and key not in str(body)
    assert body["messages"] == MSG


def test_streaming_chunks_arrive_before_the_upstream_finishes(gateway, fake_upstream):
    pieces = [f"tok{i} " for i in range(10)]
    fake = fake_upstream(lambda path, h, body: ("sse", chunks(body["model"], pieces,
                                                               usage={"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13}), 0.15))
    base, key, _, _ = gateway.consumer([fake.registry()])
    c = client(base, key)
    stream = c.chat.completions.create(model="m", messages=MSG, stream=True, stream_options={"include_usage": True})
    first_content_at = None
    text = ""
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first_content_at is None:
                first_content_at = time.monotonic()
                assert fake.last_event_sent_at is None, "the first chunk came only after the upstream's last"
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text == "".join(pieces)
    assert usage.total_tokens == 13
    assert first_content_at < fake.last_event_sent_at


def test_mock_chat_stream_embeddings_and_models(gateway):
    base, key, _, _ = gateway.consumer(
        [{"name": "mock", "provider": "mock", "models": ["mock-1", "mock-embed"], "options": {"chunks": 3}}])
    c = client(base, key)
    out = c.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "ping pong"}])
    assert out.choices[0].message.content == "ping pong"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in
                       c.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "ping pong"}], stream=True)
                       if ch.choices)
    assert streamed == "ping pong"
    # The SDK asks for base64 embeddings by default and decodes them itself.
    emb = c.embeddings.create(model="mock-embed", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 16
    assert emb.data[0].embedding == c.embeddings.create(model="mock-embed", input="a", encoding_format="float").data[0].embedding
    models = sorted(m.id for m in c.models.list())
    assert models == ["mock-1", "mock-embed"]


def test_embeddings_pass_through_to_an_openai_upstream(gateway, fake_upstream):
    fake = fake_upstream(lambda path, h, body: ("json", 200, {
        "object": "list", "model": body["model"],
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
        "usage": {"prompt_tokens": 1, "total_tokens": 1}}))
    base, key, _, _ = gateway.consumer([fake.registry()])
    out = client(base, key).embeddings.create(model="text-embedding-3-small", input="hi", encoding_format="float")
    assert out.data[0].embedding == [0.25, -0.5]
    assert fake.requests[0][0] == "/v1/embeddings"


def test_each_error_status_raises_the_sdk_exception(gateway, fake_upstream):
    fake = fake_upstream(lambda path, h, body: ("json", 429, {"error": {
        "message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}})
        if body.get("model") == "limited" else ("json", 200, completion(body.get("model"), "ok")))
    base, key, slug, _ = gateway.consumer([fake.registry()], model_policies=[])
    ok = client(base, key)
    with pytest.raises(openai.AuthenticationError) as e:
        client(base, "sy-not-a-real-key").chat.completions.create(model="m", messages=MSG)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        client(base.replace(slug, "nosuchslug"), key).chat.completions.create(model="m", messages=MSG)
    assert e.value.code == "consumer_not_found"
    with pytest.raises(openai.BadRequestError):
        ok.chat.completions.create(model=12345, messages=MSG)
    with pytest.raises(openai.APIStatusError) as e:
        ok.chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * (11 * 1024 * 1024)}])
    assert e.value.status_code == 413
    with pytest.raises(openai.RateLimitError):
        ok.chat.completions.create(model="limited", messages=MSG)
    # A model outside the consumer's allow-list.
    base2, key2, _, _ = gateway.consumer([fake.registry(name="oa2", models=["only-this"])])
    with pytest.raises(openai.PermissionDeniedError) as e:
        client(base2, key2).chat.completions.create(model="gpt-4o", messages=MSG)
    assert e.value.code == "model_not_allowed"
    assert fake.requests and all(r[2].get("model") in ("limited",) for r in fake.requests)
    assert key not in gateway.logs()
