"""SPEC §4 from the outside: `/metrics` parses with Prometheus' own text parser and its
counters move by exactly the traffic sent; one JSON log line per request with the SPEC's
fields; no credential anywhere in the gateway's output."""

import json
import time
import urllib.request

import openai
import pytest
from conftest import ADMIN_TOKEN, completion
from prometheus_client.parser import text_string_to_metric_families


def scrape(gw):
    text = urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/metrics").read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def test_counters_move_by_exactly_the_traffic_sent(gateway):
    base, key, _, _ = gateway.consumer([{"name": "mock", "provider": "mock", "models": ["mock-1"]}])
    c = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    before = scrape(gateway)
    tokens_in = tokens_out = 0
    for i in range(7):
        r = c.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": f"question {i} " * (i + 1)}])
        tokens_in += r.usage.prompt_tokens
        tokens_out += r.usage.completion_tokens
    for _ in range(3):
        # The client asks for no usage; the gateway still counts the stream's tokens.
        chunks = list(c.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "stream me"}], stream=True))
        assert all(ch.usage is None for ch in chunks)
    for _ in range(2):
        with pytest.raises(openai.PermissionDeniedError):
            c.chat.completions.create(model="not-in-catalog", messages=[{"role": "user", "content": "x"}])
    # Metrics are recorded once each response has been written: wait for the last one.
    deadline = time.time() + 3
    while True:
        after = scrape(gateway)
        if value(after, "switchyard_request_duration_seconds_count", consumer="app") - \
                value(before, "switchyard_request_duration_seconds_count", consumer="app") >= 12 or time.time() > deadline:
            break
        time.sleep(0.02)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("switchyard_requests_total", consumer="app", registry="mock", model="mock-1", status_class="2xx") == 10
    assert moved("switchyard_requests_total", consumer="app", status_class="4xx") == 2
    assert moved("switchyard_request_duration_seconds_count", consumer="app") == 12
    # Streams: "stream me" is 3 prompt tokens and 3 completion tokens at 4 characters each.
    assert moved("switchyard_tokens_total", consumer="app", direction="input") == tokens_in + 3 * 3
    assert moved("switchyard_tokens_total", consumer="app", direction="output") == tokens_out + 3 * 3
    assert moved("switchyard_upstream_attempts_total", registry="mock", outcome="success") == 10
    assert value(after, "switchyard_active_streams") == 0
    assert value(after, "switchyard_circuit_state", registry="mock") == 0
    # No unbounded label: the refused model never became a label value.
    assert not any("not-in-catalog" in str(k) for k in after)


def test_one_log_line_per_request_and_no_secret_anywhere(gateway, fake_upstream):
    provider_key = "sk-provider-very-secret-4242"
    fake = fake_upstream(lambda p, h, b: ("json", 200, completion(b["model"], "hi")))
    base, key, slug, _ = gateway.consumer([fake.registry(auth={"api_key": provider_key})])
    c = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    for _ in range(4):
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key=key + "x", max_retries=0).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}])
    deadline = time.time() + 3
    while True:
        logs = gateway.logs()
        lines = [json.loads(l) for l in logs.splitlines() if l.startswith("{")]
        access = [l for l in lines if l.get("target") == "switchyard::access"]
        if len(access) >= 5 or time.time() > deadline:
            break
        time.sleep(0.02)
    assert len(access) == 5
    for field in ["request_id", "consumer", "registry", "model", "status", "attempts",
                  "tokens_in", "tokens_out", "ttfb_ms", "upstream_ms", "total_ms"]:
        assert all(field in l for l in access), field
    assert [l["status"] for l in access] == [200, 200, 200, 200, 401]
    assert access[0]["tokens_in"] == 5 and access[0]["model"] == "openai/m"
    for secret in [key, key + "x", provider_key, ADMIN_TOKEN]:
        assert secret not in logs
    assert "hello" not in logs, "no payload in the logs"
