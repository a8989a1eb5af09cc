//! The OpenAI-compatible server end to end over loopback HTTP, with the tiny checkpoints on the
//! CPU: answers equal `Pipeline::generate`'s, streams equal whole answers, usage counts,
//! every validation error, the API key, /health and /metrics, cancellation on disconnect and
//! graceful shutdown.

mod common;

use std::io::Read;
use std::time::Duration;

use burn_phi3v::{LoadOptions, Pipeline, Request};
use common::*;
use serde_json::{Value, json};

const P35V: &str = "phi35v-tiny";
const P3V: &str = "phi3v-tiny";

fn pipeline(model: &str) -> Pipeline {
    Pipeline::from_pretrained(model_dir(model), "cpu", &LoadOptions::default()).expect("tiny checkpoint on cpu")
}

fn chat_body(model: &str, prompt: &str, image: Option<&str>, max_tokens: u64) -> Value {
    let mut parts = vec![json!({"type": "text", "text": prompt})];
    if let Some(name) = image {
        parts.push(json!({"type": "image_url", "image_url": {"url": data_url(name)}}));
    }
    json!({
        "model": model,
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "return_token_ids": true,
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("token_ids").iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn chat_with_an_image_equals_pipeline_generate_and_streams_the_same() {
    let server = start(P35V, |_, _| {});
    let addr = server.addr();
    let expected = pipeline(P35V)
        .generate(&Request::new("What animal is this?").image_path(image_path("chelsea.png")).max_new_tokens(12))
        .expect("pipeline generate");

    let r = post_json(addr, "/v1/chat/completions", &chat_body(P35V, "What animal is this?", Some("chelsea.png"), 12));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], P35V);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &v["choices"][0];
    assert_eq!(ids(&choice["token_ids"]), expected.token_ids, "greedy ids differ from Pipeline::generate");
    assert_eq!(choice["message"]["content"].as_str().unwrap(), expected.text);
    assert_eq!(choice["message"]["role"], "assistant");
    let reason = if expected.token_ids.len() == 12 { "length" } else { "stop" };
    assert_eq!(choice["finish_reason"], reason);
    // Usage: image tokens counted in the prompt and reported on their own.
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"].as_u64().unwrap() as usize, expected.prompt_tokens);
    assert_eq!(u["completion_tokens"].as_u64().unwrap() as usize, expected.token_ids.len());
    assert_eq!(u["total_tokens"].as_u64().unwrap() as usize, expected.prompt_tokens + expected.token_ids.len());
    assert_eq!(u["prompt_tokens_details"]["image_tokens"].as_u64().unwrap() as usize, expected.image_tokens);
    assert_eq!(expected.image_tokens, 757, "chelsea.png at num_crops 4");

    // The same request streamed, with a usage chunk.
    let mut body = chat_body(P35V, "What animal is this?", Some("chelsea.png"), 12);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let s = post_json(addr, "/v1/chat/completions", &body);
    assert_eq!(s.status, 200);
    assert!(s.header("content-type").unwrap().starts_with("text/event-stream"));
    let (text, chunks) = stream_text(&s.sse_data());
    assert_eq!(text, expected.text, "concatenated chunks differ from the whole answer");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    let finals: Vec<&Value> = chunks.iter().filter(|c| c["choices"].get(0).is_some_and(|c| !c["finish_reason"].is_null())).collect();
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0]["choices"][0]["finish_reason"], reason);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(&last["usage"], u, "the usage chunk equals the non-streamed usage");
}

#[test]
fn completions_take_the_raw_prompt_and_stream_the_same() {
    let server = start(P3V, |_, _| {});
    let addr = server.addr();
    let prompt = "<|user|>\nWrite a haiku about GPUs and memory bandwidth.<|end|>\n<|assistant|>\n";
    let expected = pipeline(P3V).generate(&Request::raw(prompt).max_new_tokens(10)).expect("generate");
    // The fixture's greedy ids (cli/tests/cli.rs generate_json_reproduces_the_fixture).
    assert_eq!(expected.token_ids, [24109, 2835, 20548, 24252, 5028, 25947, 8826, 31716, 8258, 968]);

    let body = json!({"model": P3V, "prompt": prompt, "max_tokens": 10, "temperature": 0.0, "return_token_ids": true});
    let r = post_json(addr, "/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(ids(&v["choices"][0]["token_ids"]), expected.token_ids);
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), expected.text);
    assert_eq!(v["usage"]["prompt_tokens"], 20);
    assert_eq!(v["usage"]["completion_tokens"], 10);
    assert_eq!(v["usage"]["prompt_tokens_details"]["image_tokens"], 0);

    let mut body = body;
    body["stream"] = json!(true);
    let s = post_json(addr, "/v1/completions", &body);
    let (text, chunks) = stream_text(&s.sse_data());
    assert_eq!(text, expected.text);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");

    // A seeded sampled request is reproducible (same seed, same text).
    let sampled = json!({"model": P3V, "prompt": prompt, "max_tokens": 8, "temperature": 0.9, "top_p": 0.95, "seed": 7});
    let a = post_json(addr, "/v1/completions", &sampled).json();
    let b = post_json(addr, "/v1/completions", &sampled).json();
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
}

/// Posts `body` (raw bytes) and checks the status and OpenAI's error shape.
fn expect_error(addr: std::net::SocketAddr, path: &str, body: &[u8], status: u16, needle: &str) -> Value {
    let r = request(addr, "POST", path, &[("Content-Type", "application/json")], body);
    assert_eq!(r.status, status, "{path} {}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]), r.text());
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].as_str().unwrap().contains(needle), "{needle:?} not in {}", e["message"]);
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    e.clone()
}

#[test]
fn validation_errors_are_openai_errors_with_their_status() {
    let server = start(P35V, |o, c| {
        o.max_images = Some(1);
        c.max_body_bytes = 256 * 1024;
    });
    let addr = server.addr();
    let chat = "/v1/chat/completions";
    let user = |extra: Value| {
        let mut b = json!({"model": P35V, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b.to_string().into_bytes()
    };
    let image_msg = |urls: &[String]| {
        let mut parts = vec![json!({"type": "text", "text": "Compare."})];
        parts.extend(urls.iter().map(|u| json!({"type": "image_url", "image_url": {"url": u}})));
        json!({"model": P35V, "messages": [{"role": "user", "content": parts}], "max_tokens": 2}).to_string().into_bytes()
    };

    expect_error(addr, chat, b"{\"model\": ", 400, "malformed JSON");
    expect_error(addr, chat, b"{\"model\": \"x\", \"messages\": 3}", 400, "invalid request body");
    let e = expect_error(addr, chat, &user(json!({"model": "gpt-4o"})), 404, "gpt-4o");
    assert_eq!(e["code"], "model_not_found");
    let png = data_url("tiny_rgba.png");
    let e = expect_error(addr, chat, &image_msg(&[png.clone(), png.clone()]), 400, "more than the limit of 1");
    assert_eq!(e["code"], "too_many_images");
    let e = expect_error(addr, chat, &user(json!({"max_tokens": 1_000_000})), 400, "context");
    assert_eq!(e["code"], "context_length_exceeded");
    let e = expect_error(addr, chat, &user(json!({"max_tokens": 20_000})), 400, "KV-cache");
    assert_eq!(e["code"], "kv_cache_capacity_exceeded");
    for (field, value, needle) in [
        ("n", json!(2), "n = 2"),
        ("logprobs", json!(true), "logprobs"),
        ("top_logprobs", json!(3), "top_logprobs"),
        ("tools", json!([{"type": "function", "function": {"name": "f"}}]), "tool"),
        ("tool_choice", json!("required"), "tool"),
        ("response_format", json!({"type": "json_object"}), "response_format"),
        ("logit_bias", json!({"50256": -100}), "logit_bias"),
        ("presence_penalty", json!(0.5), "presence_penalty"),
    ] {
        let e = expect_error(addr, chat, &user(json!({ field: value })), 400, needle);
        assert_eq!(e["param"], field);
        assert_eq!(e["code"], "unsupported_parameter");
    }
    // Out-of-range values are the library's typed errors, named as OpenAI names them.
    let e = expect_error(addr, chat, &user(json!({"top_p": 3.0})), 400, "top_p");
    assert_eq!(e["param"], "top_p");
    let e = expect_error(addr, chat, &user(json!({"max_tokens": 0})), 400, "max_tokens");
    assert_eq!(e["param"], "max_tokens");
    expect_error(addr, chat, &user(json!({"stop": ""})), 400, "stop");
    expect_error(addr, chat, &user(json!({"temperature": -1})), 400, "temperature");
    // Images.
    let e = expect_error(addr, chat, &image_msg(&["data:image/png;base64,%%%notbase64".into()]), 400, "invalid base64");
    assert_eq!(e["code"], "invalid_image");
    let e = expect_error(addr, chat, &image_msg(&["data:image/png;base64,aGVsbG8gd29ybGQ=".into()]), 400, "image 1");
    assert_eq!(e["code"], "invalid_image");
    expect_error(addr, chat, &image_msg(&["https://example.com/cat.png".into()]), 400, "not fetched");
    expect_error(addr, chat, &image_msg(&[image_path("chelsea.png").display().to_string()]), 400, "--allow-local-images");
    expect_error(addr, chat, &image_msg(&["data:image/gif;base64,R0lGOD".into()]), 400, "unsupported image type");
    // Prompt tags that do not match the images are the library's ImageTags error.
    let tags = json!({"model": P35V, "prompt": "<|image_1|> hi", "max_tokens": 2}).to_string();
    let e = expect_error(addr, "/v1/completions", tags.as_bytes(), 400, "image");
    assert_eq!(e["code"], "invalid_image_tags");
    expect_error(addr, "/v1/completions", br#"{"prompt": ["a", "b"]}"#, 400, "several prompts");
    expect_error(addr, chat, br#"{"messages": [{"role": "tool", "content": "x"}]}"#, 400, "role");
    expect_error(addr, chat, br#"{"messages": []}"#, 400, "empty");
    // A body over the limit.
    let big = format!("{{\"model\": \"{P35V}\", \"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}", "a".repeat(300 * 1024));
    let e = expect_error(addr, chat, big.as_bytes(), 413, "262144 bytes");
    assert_eq!(e["code"], "request_too_large");
    // Nothing reached the engine.
    assert_eq!(server.stats().finished + server.stats().cancelled, 0);
    // And a valid request still works.
    assert_eq!(request(addr, "POST", chat, &[], &user(json!({}))).status, 200);
}

#[test]
fn the_api_key_guards_v1_only() {
    let server = start(P3V, |_, c| c.api_key = Some("s3cret".into()));
    let addr = server.addr();
    let body = json!({"model": P3V, "prompt": "Hi", "max_tokens": 2}).to_string();
    for auth in [None, Some("Bearer wrong"), Some("s3cret"), Some("Bearer s3cret2")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = request(addr, "POST", "/v1/completions", &headers, body.as_bytes());
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
        assert_eq!(request(addr, "GET", "/v1/models", &headers, b"").status, 401);
    }
    let ok = [("Authorization", "Bearer s3cret")];
    assert_eq!(request(addr, "POST", "/v1/completions", &ok, body.as_bytes()).status, 200);
    let models = request(addr, "GET", "/v1/models", &ok, b"");
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"][0]["id"], P3V);
    // Health and metrics are open (for probes and scrapers).
    assert_eq!(get(addr, "/health").status, 200);
    assert_eq!(get(addr, "/metrics").status, 200);
    // An unknown route is an OpenAI-style 404.
    assert_eq!(get(addr, "/v2/nothing").status, 404);
}

#[test]
fn health_and_metrics_report_the_server_and_the_engine() {
    let server = start(P3V, |_, _| {});
    let addr = server.addr();
    let h = get(addr, "/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(h.json()["device"], "cpu");

    let m0 = get(addr, "/metrics");
    assert!(m0.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let m0 = m0.text();
    assert_eq!(metric(&m0, "phi3v_generation_tokens_total"), 0.0);
    assert_eq!(metric(&m0, "phi3v_kv_cache_blocks_total"), 1024.0);

    let body = json!({"model": P3V, "prompt": "Hello there", "max_tokens": 6, "min_tokens": 6, "temperature": 0});
    let first = post_json(addr, "/v1/completions", &body);
    assert_eq!(first.status, 200);
    let prompt_tokens = first.json()["usage"]["prompt_tokens"].as_f64().unwrap();
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    assert_eq!(post_json(addr, "/v1/completions", &streamed).status, 200);
    // One error.
    assert_eq!(post_json(addr, "/v1/completions", &json!({"model": "nope", "prompt": "x"})).status, 404);

    // The engine publishes its counters after the pass that ended the requests.
    assert!(wait_until(Duration::from_secs(10), || server.stats().finished == 2), "{:?}", server.stats());
    let m = get(addr, "/metrics").text();
    for name in [
        "phi3v_num_requests_running",
        "phi3v_num_requests_waiting",
        "phi3v_kv_cache_blocks_used",
        "phi3v_kv_cache_blocks_free",
        "phi3v_generation_tokens_total",
        "phi3v_time_to_first_token_seconds",
        "phi3v_inter_token_latency_seconds",
        "phi3v_prefix_cache_hit_tokens_total",
        "phi3v_prefix_cache_blocks",
    ] {
        assert!(m.contains(&format!("# TYPE {name} ")), "{name} missing:\n{m}");
    }
    assert_eq!(metric(&m, "phi3v_generation_tokens_total"), 12.0);
    assert_eq!(metric(&m, "phi3v_request_success_total{finished_reason=\"length\"}"), 2.0);
    assert_eq!(metric(&m, "phi3v_request_error_total"), 1.0);
    assert_eq!(metric(&m, "phi3v_time_to_first_token_seconds_count"), 2.0);
    assert_eq!(metric(&m, "phi3v_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), 2.0);
    assert_eq!(metric(&m, "phi3v_inter_token_latency_seconds_count"), 10.0);
    assert!(metric(&m, "phi3v_time_to_first_token_seconds_sum") > 0.0);
    assert_eq!(metric(&m, "phi3v_prompt_tokens_total"), 2.0 * prompt_tokens);
    assert_eq!(metric(&m, "phi3v_num_requests_running"), 0.0);
    assert_eq!(metric(&m, "phi3v_kv_cache_blocks_used"), 0.0);
    assert_eq!(metric(&m, "phi3v_kv_cache_blocks_free"), 1024.0);
    assert_eq!(metric(&m, "phi3v_engine_finished_total"), 2.0);
    // "Hello there" fills no 16-token block: nothing to share.
    assert_eq!(metric(&m, "phi3v_prefix_cache_hit_tokens_total"), 0.0);
}

/// Opens a long stream and reads until its first content chunk.
fn open_long_stream(addr: std::net::SocketAddr, model: &str, tokens: u64) -> std::net::TcpStream {
    let body = json!({"model": model, "prompt": "Count:", "max_tokens": tokens, "min_tokens": tokens, "temperature": 0, "stream": true});
    let mut s = send(addr, "POST", "/v1/completions", &[], body.to_string().as_bytes());
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("\"text\"") {
        let n = s.read(&mut buf).expect("read the stream");
        assert!(n > 0, "stream closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

#[test]
fn a_client_that_disconnects_cancels_its_request_in_the_engine() {
    let server = start(P3V, |_, _| {});
    let addr = server.addr();
    let stream = open_long_stream(addr, P3V, 5000);
    assert!(wait_until(Duration::from_secs(10), || server.stats().running == 1), "{:?}", server.stats());
    drop(stream); // the client goes away mid-stream
    assert!(
        wait_until(Duration::from_secs(60), || server.stats().cancelled == 1),
        "no cancellation: {:?}",
        server.stats()
    );
    let stats = server.stats();
    assert_eq!(stats.finished, 0, "the request ran to its end: {stats:?}");
    assert!(wait_until(Duration::from_secs(10), || server.stats().used_blocks == 0));
    let m = get(addr, "/metrics").text();
    assert_eq!(metric(&m, "phi3v_request_aborted_total"), 1.0);
    assert_eq!(metric(&m, "phi3v_engine_cancelled_total"), 1.0);
    assert_eq!(metric(&m, "phi3v_http_requests_in_flight"), 0.0);
    assert!(metric(&m, "phi3v_generation_tokens_total") < 5000.0);
}

#[test]
fn a_client_that_disconnects_before_a_whole_answer_cancels_it_too() {
    let server = start(P3V, |_, _| {});
    let addr = server.addr();
    let body = json!({"model": P3V, "prompt": "Count:", "max_tokens": 5000, "min_tokens": 5000, "temperature": 0});
    let s = send(addr, "POST", "/v1/completions", &[], body.to_string().as_bytes());
    assert!(wait_until(Duration::from_secs(10), || server.stats().running == 1), "{:?}", server.stats());
    drop(s);
    assert!(
        wait_until(Duration::from_secs(60), || server.stats().cancelled == 1),
        "no cancellation: {:?}",
        server.stats()
    );
    assert_eq!(server.stats().finished, 0);
}

#[test]
fn shutdown_finishes_requests_in_flight_and_refuses_new_ones() {
    let server = start(P3V, |_, _| {});
    let addr = server.addr();
    let tokens = 150;
    let mut stream = open_long_stream(addr, P3V, tokens);
    server.shutdown_handle().shutdown();
    // New completion requests are refused while the stream drains; health says so.
    let body = json!({"model": P3V, "prompt": "Hi", "max_tokens": 2});
    let r = post_json(addr, "/v1/completions", &body);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "service_unavailable");
    assert_eq!(get(addr, "/health").status, 503);
    // The stream in flight runs to its end.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("the rest of the stream");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    // The last event is [DONE], then the chunked body's end.
    let events = sse_data(&rest);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{rest}");
    assert!(rest.ends_with("0\r\n\r\n"), "{rest}");
    assert!(wait_until(Duration::from_secs(10), || server.stats().finished == 1), "{:?}", server.stats());
    assert_eq!(server.stats().cancelled, 0);
    // The server stops once it has drained.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(server.join().is_ok()));
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(true), "the server did not stop");
    assert!(std::net::TcpStream::connect(addr).is_err(), "still listening after shutdown");
}

#[test]
fn local_images_are_read_only_when_allowed() {
    let server = start(P35V, |_, c| c.allow_local_images = true);
    let addr = server.addr();
    let path = image_path("rocket.png").display().to_string();
    let mut texts = Vec::new();
    for url in [data_url("rocket.png"), path.clone(), format!("file://{path}")] {
        let body = json!({
            "model": P35V,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe it."}]}],
            "max_tokens": 5, "temperature": 0, "return_token_ids": true,
        });
        let r = post_json(addr, "/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        texts.push(r.json()["choices"][0]["token_ids"].clone());
    }
    assert_eq!(texts[0], texts[1]);
    assert_eq!(texts[0], texts[2]);
    // Remote URLs stay refused.
    let remote = json!({"model": P35V, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}]}]});
    assert_eq!(post_json(addr, "/v1/chat/completions", &remote).status, 400);
    let missing = json!({"model": P35V, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/nonexistent/x.png"}}]}]});
    let r = post_json(addr, "/v1/chat/completions", &missing);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("/nonexistent/x.png"));
}
