//! Issue #8: stream translation makes no allocation per byte. Each translated text delta is
//! measured with a counting allocator at three text lengths (6 B, 600 B, 6,000 B): the number
//! of allocations must not grow with the text, and the bytes allocated stay within a small
//! multiple of what the event carries in and out.
//!
//! The headers an open stream holds for its lifetime are measured the same way, by the bytes
//! they keep allocated.
//!
//! Counters are per thread, so tests running side by side do not see each other's allocations.

use pingora::http::{RequestHeader, ResponseHeader};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use switchyard::providers::Wire;
use switchyard::proxy::compact;
use switchyard::stream::eventstream::encode_event;
use switchyard::stream::sse::SseParser;
use switchyard::translate::{anthropic, ToOpenAiStage};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
    /// Bytes allocated and not yet freed.
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with`: allocations made while the thread is being torn down are not counted.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
    let _ = BYTES.try_with(|c| c.set(c.get() + bytes as u64));
    live(bytes as i64);
}

fn live(delta: i64) {
    let _ = LIVE.try_with(|c| c.set(c.get() + delta));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        live(-(layout.size() as i64));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// (allocations, bytes allocated) while `f` runs, and what it returned.
fn measure<T>(f: impl FnOnce() -> T) -> (u64, u64, T) {
    let (a0, b0) = (ALLOCS.with(Cell::get), BYTES.with(Cell::get));
    let out = f();
    let (a1, b1) = (ALLOCS.with(Cell::get), BYTES.with(Cell::get));
    (a1 - a0, b1 - b0, out)
}

/// What `f` returns, and the bytes it keeps allocated.
fn held<T>(f: impl FnOnce() -> T) -> (i64, T) {
    let l0 = LIVE.with(Cell::get);
    let out = f();
    (LIVE.with(Cell::get) - l0, out)
}

/// A text of `n` bytes that JSON carries as it is.
fn text(n: usize) -> String {
    "token ".repeat(n / 6)
}

/// Feeds `event(len)` for each length (after `warm`, which opens the stream as its first events
/// would) and checks the allocation count is the same at every length and the bytes are
/// bounded by the event's size in and out.
fn check(
    name: &str,
    mut feed: impl FnMut(&[u8]) -> usize,
    warm: &[u8],
    event: impl Fn(usize) -> Vec<u8>,
) {
    feed(warm);
    // One event of each length first: buffers that keep their capacity across events settle.
    for len in [6, 600, 6000] {
        feed(&event(len));
    }
    let mut counts = Vec::new();
    for len in [6, 600, 6000] {
        let input = event(len);
        let (allocs, bytes, out) = measure(|| feed(&input));
        eprintln!(
            "{name}: {len} B text: {allocs} allocations, {bytes} B ({} B in, {out} B out)",
            input.len()
        );
        assert!(out > len, "{name}: {len} B of text gave {out} B of output");
        let bound = 3 * (input.len() + out) as u64 + 1024;
        assert!(
            bytes <= bound,
            "{name}: {bytes} B allocated for a {len} B text ({} B in, {out} B out; bound {bound})",
            input.len()
        );
        counts.push(allocs);
    }
    assert!(
        counts.iter().all(|&c| c == counts[0]),
        "{name}: allocations per event grow with the text (6 B, 600 B, 6,000 B): {counts:?}"
    );
    assert!(
        counts[0] <= 32,
        "{name}: {} allocations per event",
        counts[0]
    );
}

fn sse(event: &str, data: &str) -> Vec<u8> {
    format!("event: {event}\ndata: {data}\n\n").into_bytes()
}

#[test]
fn anthropic_to_openai_allocates_per_event_not_per_byte() {
    let mut stage = ToOpenAiStage::new(Wire::Anthropic, "m").unwrap();
    let mut warm = sse(
        "message_start",
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[],"usage":{"input_tokens":3,"output_tokens":1}}}"#,
    );
    warm.extend(sse(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    ));
    check(
        "anthropic -> openai",
        |b| stage.feed(b).unwrap().len(),
        &warm,
        |n| {
            sse(
                "content_block_delta",
                &format!(
                    r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{}"}}}}"#,
                    text(n)
                ),
            )
        },
    );
}

#[test]
fn gemini_to_openai_allocates_per_event_not_per_byte() {
    let mut stage = ToOpenAiStage::new(Wire::Gemini, "g").unwrap();
    let delta = |n: usize| {
        format!(
            "data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"{}\"}}]}},\"index\":0}}]}}\n\n",
            text(n)
        )
        .into_bytes()
    };
    check(
        "gemini -> openai",
        |b| stage.feed(b).unwrap().len(),
        &delta(6),
        delta,
    );
}

#[test]
fn bedrock_to_openai_allocates_per_event_not_per_byte() {
    let mut stage = ToOpenAiStage::new(Wire::Bedrock, "m").unwrap();
    let delta = |n: usize| {
        encode_event(
            "contentBlockDelta",
            &format!(
                r#"{{"contentBlockIndex":0,"delta":{{"text":"{}"}},"p":"abcdefghij"}}"#,
                text(n)
            ),
        )
    };
    check(
        "bedrock -> openai",
        |b| stage.feed(b).unwrap().len(),
        &delta(6),
        delta,
    );
}

#[test]
fn openai_to_anthropic_allocates_per_event_not_per_byte() {
    // As the relay does it: parse the SSE, then the plain-text fast path per event.
    let mut parser = SseParser::new();
    let mut machine = anthropic::FromOpenAiStream::default();
    let chunk = |n: usize| {
        format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"finish_reason\":null}}]}}\n\n",
            text(n)
        )
        .into_bytes()
    };
    let first = chunk(6);
    let data = first.strip_prefix(b"data: ").unwrap().trim_ascii_end();
    machine.event(Some(&serde_json::from_slice(data).unwrap())); // opens the text block
    check(
        "openai -> anthropic",
        |b| {
            let mut out = 0;
            for (event, _) in parser.feed(b).unwrap() {
                let data = event.data.unwrap();
                out += machine.text_fast_path(&data).unwrap().len();
            }
            out
        },
        b"",
        chunk,
    );
}

/// A stream's response header as the gateway builds it: the upstream's fields, its own six,
/// rate-limit ones and the stream's (12 in all), one insert at a time.
fn stream_response_header() -> Box<ResponseHeader> {
    let mut h = ResponseHeader::build_no_case(200, None).unwrap();
    for (k, v) in [
        ("content-type", "text/event-stream"),
        ("x-request-id", "0d333448-d533-49d6-9315-6bcf62fef6a5"),
        ("x-switchyard-registry", "openai-a"),
        ("x-switchyard-model", "openai/gpt-4o-mini"),
        ("x-switchyard-attempts", "1"),
        ("x-switchyard-upstream-latency", "120"),
        ("x-switchyard-proxy-latency", "0"),
        ("x-ratelimit-limit-requests", "1000"),
        ("x-ratelimit-remaining-requests", "999"),
        ("x-ratelimit-reset-requests", "60ms"),
        ("cache-control", "no-cache"),
        ("x-accel-buffering", "no"),
    ] {
        h.insert_header(k, v).unwrap();
    }
    Box::new(h)
}

/// What Pingora sets on a response header as it writes it.
fn pingora_writes(h: &mut ResponseHeader, http2: bool) {
    h.insert_header("date", "Thu, 03 Dec 2026 14:50:47 GMT")
        .unwrap();
    if !http2 {
        h.insert_header("connection", "keep-alive").unwrap();
    }
}

/// The header an open stream holds keeps room for its fields only: ~1 KiB of room less than
/// the map it was built in once Pingora has added its fields as it writes it (less the
/// shared copies of the values the clone makes).
#[test]
fn an_open_streams_headers_keep_room_for_their_fields_only() {
    for http2 in [true, false] {
        let (grown, mut as_built) = held(stream_response_header);
        let (added, ()) = held(|| pingora_writes(&mut as_built, http2));
        let (kept, mut compact) =
            held(|| compact::response(stream_response_header(), http2).unwrap());
        assert!(compact.headers.get("date").is_some());
        assert_eq!(compact.headers.get("connection").is_some(), !http2);
        assert!(
            kept + 400 < grown + added,
            "kept {kept} B against {} B (http2: {http2})",
            grown + added
        );
        // Pingora's own inserts as it writes replace, they do not grow the map.
        let (more, ()) = held(|| pingora_writes(&mut compact, http2));
        assert!(
            more < 200,
            "writing grew the header by {more} B (http2: {http2})"
        );
    }

    let build = || {
        let mut h = RequestHeader::build_no_case("POST", b"/v1/chat/completions", None).unwrap();
        for (k, v) in [
            ("host", "api.openai.com"),
            ("content-type", "application/json"),
            ("content-length", "165"),
            ("accept-encoding", "identity"),
            ("x-request-id", "0d333448-d533-49d6-9315-6bcf62fef6a5"),
            ("authorization", "Bearer sk-upstream"),
        ] {
            h.insert_header(k, v).unwrap();
        }
        h
    };
    let (grown, _as_built) = held(build);
    let (kept, _compact) = held(|| compact::request(build()));
    assert!(kept + 300 < grown, "kept {kept} B against {grown} B");
}
