"""Streams that fail after their first byte end with an error the `openai` SDK raises, never
with a clean end that looks complete (SPEC §3 step 9); the gateway then serves normally."""

import openai
import pytest
from conftest import chunks, completion

MSG = [{"role": "user", "content": "Hello"}]


def stream_text(c, model):
    text = ""
    for chunk in c.chat.completions.create(model=model, messages=MSG, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text


@pytest.mark.parametrize("mode", ["cut", "stall", "malformed"])
def test_mid_stream_failures_raise_and_the_next_request_works(gateway, fake_upstream, mode):
    def handler(path, headers, body):
        model = body["model"]
        events = chunks(model, ["partial ", "answer ", "that ", "never ", "ends"])
        if model == "cut":
            return ("sse_cut", events[:3], 0)
        if model == "stall":
            return ("sse", events, 1.0)
        if model == "malformed":
            return ("sse", events[:2] + ["data: {\"choices\": [ broken\n\n"] + events[2:], 0)
        return ("json", 200, completion(model, "fine"))

    fake = fake_upstream(handler)
    base, key, _, _ = gateway.consumer([fake.registry(timeouts={"stream_idle_ms": 300})])
    c = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    with pytest.raises(openai.APIError) as e:
        stream_text(c, mode)
    assert "registry" in str(e.value)
    assert c.chat.completions.create(model="ok", messages=MSG).choices[0].message.content == "fine"


def test_a_complete_stream_without_done_is_finished(gateway, fake_upstream):
    events = chunks("m", ["all ", "there"])[:-1]  # no [DONE]
    fake = fake_upstream(lambda p, h, b: ("sse", events, 0))
    base, key, _, _ = gateway.consumer([fake.registry()])
    c = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    assert stream_text(c, "m") == "all there"
