"""TLS (SPEC §1 proxy.tls; issue: operations): the `openai` SDK over HTTPS with a test CA, HTTP/2
through ALPN, and provider certificates verified: one for another host or an expired one is
refused with a clear 502. Also HTTP/2 without TLS (`proxy.h2c`), as a load balancer speaks it."""

import datetime
import ipaddress
import ssl
from concurrent.futures import ThreadPoolExecutor

import importlib

import openai
import pytest
from conftest import Gateway, completion
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# The HTTP client library the installed SDK is built on (httpx, or httpx2 in openai 3.x).
try:
    httpx = importlib.import_module("httpx")
except ImportError:
    httpx = importlib.import_module("httpx2")


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, key, cert):
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path.with_suffix(".pem")), str(path.with_suffix(".key"))


@pytest.fixture
def pki(tmp_path):
    """A test CA and three server certificates it signs: valid for localhost, for another
    host, and expired."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("switchyard test CA")).issuer_name(_name("switchyard test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(name, hosts, before, after):
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
        cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(before).not_valid_after(after)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return _write(tmp_path / name, key, cert)

    day = datetime.timedelta(days=1)
    return {
        "ca": str(ca_path),
        "localhost": leaf("localhost", ["localhost", "127.0.0.1"], now - day, now + 30 * day),
        "wrong_host": leaf("wrong", ["wrong.example"], now - day, now + 30 * day),
        "expired": leaf("expired", ["localhost", "127.0.0.1"], now - 30 * day, now - day),
    }


def test_openai_sdk_over_https_and_http2(pki):
    gw = Gateway(tls=pki["localhost"])
    try:
        _, key, slug, _ = gw.consumer([{"name": "mock", "provider": "mock", "options": {"chunks": 3}}])
        base = f"https://localhost:{gw.tls_port}/{slug}/v1"
        c = openai.OpenAI(base_url=base, api_key=key, max_retries=0, http_client=httpx.Client(verify=ssl.create_default_context(cafile=pki["ca"])))
        out = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "over tls"}])
        assert out.choices[0].message.content == "over tls"
        text = "".join(ch.choices[0].delta.content or "" for ch in
                       c.chat.completions.create(model="m", messages=[{"role": "user", "content": "streamed tls"}], stream=True)
                       if ch.choices)
        assert text == "streamed tls"
        with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=pki["ca"])) as h2:
            r = h2.post(f"{base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                        json={"model": "m", "messages": [{"role": "user", "content": "h2"}]})
            assert r.http_version == "HTTP/2"
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "h2"
            with h2.stream("POST", f"{base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                           json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "h2 stream"}]}) as s:
                assert s.http_version == "HTTP/2"
                body = "".join(s.iter_text())
            assert body.endswith("data: [DONE]\n\n")
        # A client that does not trust the CA refuses the gateway's certificate.
        with pytest.raises(openai.APIConnectionError):
            openai.OpenAI(base_url=base, api_key=key, max_retries=0).models.list()
    finally:
        gw.stop()


def test_openai_sdk_over_h2c_next_to_http1():
    """With `proxy.h2c`, HTTP/2 with prior knowledge (many streams on one connection) and plain
    HTTP/1.1 share the cleartext listener; without it, an h2c client is refused."""
    mock = {"name": "mock", "provider": "mock", "options": {"chunks": 3}}
    ask = lambda text: [{"role": "user", "content": text}]
    gw = Gateway(h2c=True)
    try:
        base, key, _, _ = gw.consumer([mock])
        with httpx.Client(http1=False, http2=True) as h2:
            c = openai.OpenAI(base_url=base, api_key=key, max_retries=0, http_client=h2)
            raw = c.chat.completions.with_raw_response.create(model="m", messages=ask("over h2c"))
            assert raw.http_response.http_version == "HTTP/2"
            assert raw.parse().choices[0].message.content == "over h2c"

            def streamed(i):
                chunks = c.chat.completions.create(model="m", messages=ask(f"stream {i} on h2c"), stream=True)
                return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

            with ThreadPoolExecutor(8) as pool:
                assert list(pool.map(streamed, range(8))) == [f"stream {i} on h2c" for i in range(8)]
        raw = openai.OpenAI(base_url=base, api_key=key, max_retries=0).chat.completions.with_raw_response.create(
            model="m", messages=ask("over http/1.1"))
        assert raw.http_response.http_version == "HTTP/1.1"
        assert raw.parse().choices[0].message.content == "over http/1.1"
    finally:
        gw.stop()
    gw = Gateway()
    try:
        base, key, _, _ = gw.consumer([mock])
        with httpx.Client(http1=False, http2=True) as h2, pytest.raises(httpx.HTTPError):
            h2.post(f"{base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                    json={"model": "m", "messages": ask("refused")})
    finally:
        gw.stop()


def test_provider_certificates_are_verified(pki, fake_upstream):
    handler = lambda path, h, body: ("json", 200, completion(body["model"], "secure"))
    good = fake_upstream(handler, tls=pki["localhost"])
    wrong = fake_upstream(handler, tls=pki["wrong_host"])
    expired = fake_upstream(handler, tls=pki["expired"])
    gw = Gateway(upstream_ca=pki["ca"])
    try:
        base, key, _, _ = gw.consumer([good.registry("good"), wrong.registry("wrong"), expired.registry("expired")])
        c = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
        assert c.chat.completions.create(model="good/m", messages=[{"role": "user", "content": "x"}]).choices[0].message.content == "secure"
        for name in ["wrong", "expired"]:
            with pytest.raises(openai.APIStatusError) as e:
                c.chat.completions.create(model=f"{name}/m", messages=[{"role": "user", "content": "x"}])
            assert e.value.status_code == 502
            assert "TLS" in e.value.message and "certificate" in e.value.message
        assert len(wrong.requests) == 0 and len(expired.requests) == 0
    finally:
        gw.stop()
