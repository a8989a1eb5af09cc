"""`phi3v serve` through the official OpenAI Python client: answers equal `phi3v generate`'s,
streams equal whole answers, usage counts, validation errors surface as the client's
exceptions with their status codes, and the API key is checked.

Run: `cargo build -p phi3v-cli && python3 -m pytest -q server/tests/openai`.
"""

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request

import openai
import pytest

import signal

from conftest import API_KEY, IMAGES, MAX_BODY_BYTES, MODEL, ROOT, phi3v_bin, start_server, stop_server

PROMPT = "What animal is this?"
MAX_TOKENS = 12


def http(method: str, url: str, body: bytes = None, headers: dict = None):
    """A plain HTTP request (standard library): (status, body text)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def data_url(name: str) -> str:
    return "data:image/png;base64," + base64.b64encode((IMAGES / name).read_bytes()).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def chat_messages(prompt: str, *urls: str) -> list:
    return [{"role": "user", "content": [{"type": "text", "text": prompt}, *map(image_part, urls)]}]


@pytest.fixture(scope="module")
def generated():
    """`phi3v generate --json` for the prompt and image (greedy)."""
    out = subprocess.run(
        [str(phi3v_bin()), "generate", "--model", str(MODEL), "--image", str(IMAGES / "chelsea.png"),
         "--prompt", PROMPT, "--max-new-tokens", str(MAX_TOKENS), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def create_chat(client, **extra):
    return client.chat.completions.create(
        model=MODEL.name,
        messages=chat_messages(PROMPT, data_url("chelsea.png")),
        max_tokens=MAX_TOKENS,
        temperature=0,
        **extra,
    )


def test_models_lists_the_served_model(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL.name]


def test_chat_with_an_image_equals_phi3v_generate(client, generated):
    resp = create_chat(client, extra_body={"return_token_ids": True})
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == generated["text"]
    assert resp.model_dump()["choices"][0]["token_ids"] == generated["token_ids"]
    assert choice.finish_reason == ("length" if len(generated["token_ids"]) == MAX_TOKENS else "stop")
    # Usage: prompt tokens include the image tokens, reported on their own too.
    u = resp.usage
    assert u.prompt_tokens == generated["prompt_tokens"] == len(generated["input_ids"])
    assert u.completion_tokens == len(generated["token_ids"])
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.model_dump()["image_tokens"] == sum(generated["num_image_tokens"]) == 757


def test_chat_streaming_equals_non_streaming(client):
    whole = create_chat(client)
    chunks = list(create_chat(client, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert len({c.id for c in chunks}) == 1


def test_completions_raw_prompt_streaming_equals_non_streaming(client):
    prompt = "<|user|>\nWrite a haiku about GPUs and memory bandwidth.<|end|>\n<|assistant|>\n"
    whole = client.completions.create(model=MODEL.name, prompt=prompt, max_tokens=10, temperature=0)
    assert whole.object == "text_completion"
    assert whole.usage.completion_tokens == 10 or whole.choices[0].finish_reason == "stop"
    stream = client.completions.create(model=MODEL.name, prompt=prompt, max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream) == whole.choices[0].text


def expect(exc_type, status, fn, code=None, needle=None):
    with pytest.raises(exc_type) as info:
        fn()
    err = info.value
    assert err.status_code == status, err
    body = err.body if isinstance(err.body, dict) else {}
    if code is not None:
        assert body.get("code") == code, body
    if needle is not None:
        assert needle in body.get("message", ""), body
    return err


def test_validation_errors_surface_as_openai_exceptions(client):
    chat = client.chat.completions.create
    base = dict(model=MODEL.name, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    expect(openai.NotFoundError, 404, lambda: chat(**{**base, "model": "gpt-4o"}), code="model_not_found")
    expect(openai.BadRequestError, 400, lambda: chat(**{**base, "max_tokens": 1_000_000}), code="context_length_exceeded")
    expect(openai.BadRequestError, 400, lambda: chat(**base, n=2), code="unsupported_parameter")
    expect(openai.BadRequestError, 400, lambda: chat(**base, logprobs=True), code="unsupported_parameter")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    expect(openai.BadRequestError, 400, lambda: chat(**base, tools=tools), code="unsupported_parameter")
    png = data_url("tiny_rgba.png")
    three = chat_messages("Compare.", png, png, png)
    expect(openai.BadRequestError, 400, lambda: chat(**{**base, "messages": three}), code="too_many_images")
    bad_b64 = chat_messages("Hi", "data:image/png;base64,@@not-base64@@")
    expect(openai.BadRequestError, 400, lambda: chat(**{**base, "messages": bad_b64}), code="invalid_image", needle="base64")
    not_image = chat_messages("Hi", "data:image/png;base64," + base64.b64encode(b"definitely not a png").decode())
    expect(openai.BadRequestError, 400, lambda: chat(**{**base, "messages": not_image}), code="invalid_image")
    remote = chat_messages("Hi", "https://example.com/cat.png")
    expect(openai.BadRequestError, 400, lambda: chat(**{**base, "messages": remote}), needle="not fetched")
    local = chat_messages("Hi", str(IMAGES / "chelsea.png"))
    expect(openai.BadRequestError, 400, lambda: chat(**{**base, "messages": local}), needle="--allow-local-images")
    huge = [{"role": "user", "content": "a" * (MAX_BODY_BYTES + 1000)}]
    expect(openai.APIStatusError, 413, lambda: chat(**{**base, "messages": huge}), code="request_too_large")
    # Only the client can send malformed JSON by accident; send it raw.
    status, text = http("POST", str(client.base_url) + "chat/completions", b'{"model": ',
                        {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert status == 400 and "malformed JSON" in json.loads(text)["error"]["message"], text


def test_the_api_key_is_checked(server):
    for key in ["wrong-key", API_KEY + "x"]:
        bad = server.client(api_key=key)
        expect(openai.AuthenticationError, 401, lambda: bad.models.list(), code="invalid_api_key")
        expect(openai.AuthenticationError, 401,
               lambda: bad.completions.create(model=MODEL.name, prompt="Hi", max_tokens=2), code="invalid_api_key")
    status, text = http("GET", server.url + "/v1/models")
    assert status == 401 and json.loads(text)["error"]["code"] == "invalid_api_key", text


def test_health_and_metrics(server, client):
    client.completions.create(model=MODEL.name, prompt="Hello", max_tokens=3, temperature=0)
    status, text = http("GET", server.url + "/health")
    assert status == 200 and json.loads(text)["status"] == "ok", text
    status, m = http("GET", server.url + "/metrics")
    assert status == 200
    for name in ["phi3v_num_requests_running", "phi3v_num_requests_waiting", "phi3v_kv_cache_blocks_used",
                 "phi3v_kv_cache_blocks_free", "phi3v_generation_tokens_total",
                 "phi3v_time_to_first_token_seconds_bucket", "phi3v_inter_token_latency_seconds_bucket"]:
        assert name in m, name
    tokens = next(float(l.split()[1]) for l in m.splitlines() if l.startswith("phi3v_generation_tokens_total "))
    assert tokens >= 3


def test_sigterm_lets_the_stream_in_flight_finish_and_refuses_new_requests():
    server = start_server()  # no API key: any key is accepted
    try:
        client = server.client(api_key="unused")
        tokens = 2000
        stream = client.completions.create(model=MODEL.name, prompt="Count:", max_tokens=tokens, temperature=0, stream=True,
                                           extra_body={"min_tokens": tokens})
        text = next(iter(stream)).choices[0].text
        server.proc.send_signal(signal.SIGTERM)
        # The server handles the signal asynchronously: wait until /health says it is draining,
        # so the request below cannot reach it before it knows (CI once lost that race).
        deadline = time.monotonic() + 30
        while http("GET", server.url + "/health")[0] != 503:
            assert time.monotonic() < deadline, "the server never reported shutting_down after SIGTERM"
            time.sleep(0.01)
        # New requests are refused while the stream drains.
        expect(openai.InternalServerError, 503, lambda: client.completions.create(model=MODEL.name, prompt="Hi", max_tokens=2),
               code="service_unavailable")
        chunks = list(stream)
        assert chunks[-1].choices[0].finish_reason == "length"
        assert server.proc.wait(timeout=60) == 0, server.proc.stderr.read()
    finally:
        if server.proc.poll() is None:
            stop_server(server, signal.SIGKILL)
