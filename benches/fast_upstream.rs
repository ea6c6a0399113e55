//! The fast local upstream of the load benchmark (`benches/load.sh`): a minimal HTTP/1.1
//! keep-alive server on tokio that answers every POST with a fixed chat completion, in the
//! OpenAI format (paths ending `/chat/completions`) or the Anthropic one (paths ending
//! `/messages`).
//!
//! A request with `"stream": true` gets an SSE stream (chunked) instead: its model names the
//! shape, `sse-N-G` = N text deltas, G ms apart (anything else: `sse-500-1`). Each delta's text
//! is `@<unix nanos when it was written>;`, so a client can tell each event's transit time.
//!
//! `cargo run --release --example fast_upstream -- LISTEN` (e.g. `127.0.0.1:9000`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, Instant};

const OPENAI_JSON: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is a fixed answer from the benchmark upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":12,"total_tokens":24}}"#;
const ANTHROPIC_JSON: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-bench","content":[{"type":"text","text":"Hello! This is a fixed answer from the benchmark upstream."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":12}}"#;

fn fixed_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// One SSE event as one HTTP chunk.
fn chunk(event: &str) -> Vec<u8> {
    format!("{:x}\r\n{event}\r\n", event.len()).into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of `"model": "..."` in a JSON body (good enough for the benchmark's own requests).
fn model(body: &[u8]) -> &str {
    let Some(at) = find(body, b"\"model\"") else {
        return "";
    };
    let rest = &body[at + 7..];
    let Some(q) = rest.iter().position(|&b| b == b'"') else {
        return "";
    };
    let rest = &rest[q + 1..];
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(0);
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

fn stream_shape(model: &str) -> (usize, u64) {
    let mut it = model.strip_prefix("sse-").unwrap_or("").split('-');
    let n = it.next().and_then(|s| s.parse().ok()).unwrap_or(500);
    let gap = it.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    (n, gap)
}

async fn stream(
    sock: &mut TcpStream,
    anthropic: bool,
    model: &str,
    usage: bool,
) -> std::io::Result<()> {
    let (n, gap) = stream_shape(model);
    let start = Instant::now();
    let mut first = SSE_HEAD.to_vec();
    if anthropic {
        first.extend(chunk(&format!("event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{model}\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":12,\"output_tokens\":1}}}}}}\n\n")));
        first.extend(chunk("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"));
    } else {
        first.extend(chunk(&format!("data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}\n\n")));
    }
    sock.write_all(&first).await?;
    for i in 0..n {
        sleep_until(start + Duration::from_millis(gap * (i as u64 + 1))).await;
        let t = now_nanos();
        let ev = if anthropic {
            format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"@{t};\"}}}}\n\n")
        } else {
            format!("data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"@{t};\"}},\"finish_reason\":null}}]}}\n\n")
        };
        sock.write_all(&chunk(&ev)).await?;
    }
    let mut last = Vec::new();
    if anthropic {
        last.extend(chunk(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        ));
        last.extend(chunk(&format!("event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{n}}}}}\n\n")));
        last.extend(chunk(
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ));
    } else {
        last.extend(chunk(&format!("data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n")));
        if usage {
            last.extend(chunk(&format!("data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n", n + 12)));
        }
        last.extend(chunk("data: [DONE]\n\n"));
    }
    last.extend(b"0\r\n\r\n");
    sock.write_all(&last).await
}

/// Serves one keep-alive connection: Content-Length or chunked request bodies.
async fn serve(mut sock: TcpStream, openai: &[u8], anthropic: &[u8]) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut tmp = [0u8; 16 * 1024];
    loop {
        // Head.
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let length: Option<usize> = header("content-length:").and_then(|v| v.parse().ok());
        let chunked = header("transfer-encoding:").is_some_and(|v| v.contains("chunked"));
        // Body.
        let body: Vec<u8> = if chunked {
            let mut body = Vec::new();
            let mut at = head_end;
            loop {
                let Some(le) = find(&buf[at..], b"\r\n") else {
                    let n = sock.read(&mut tmp).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    continue;
                };
                let size_line = String::from_utf8_lossy(&buf[at..at + le]).to_string();
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("0").trim(), 16)
                        .unwrap_or(0);
                let need = at + le + 2 + size + 2;
                while buf.len() < need {
                    let n = sock.read(&mut tmp).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                body.extend_from_slice(&buf[at + le + 2..at + le + 2 + size]);
                at = need;
                if size == 0 {
                    break;
                }
            }
            buf.drain(..at);
            body
        } else {
            let len = length.unwrap_or(0);
            while buf.len() < head_end + len {
                let n = sock.read(&mut tmp).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let body = buf[head_end..head_end + len].to_vec();
            buf.drain(..head_end + len);
            body
        };
        let is_anthropic = path.ends_with("/messages");
        let compact: Vec<u8> = body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        if find(&compact, b"\"stream\":true").is_some() {
            let usage = find(&compact, b"\"include_usage\":true").is_some();
            stream(&mut sock, is_anthropic, model(&body), usage).await?;
        } else {
            sock.write_all(if is_anthropic { anthropic } else { openai })
                .await?;
        }
    }
}

#[tokio::main]
async fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let listener = TcpListener::bind(&listen).await.expect("bind");
    let openai: &'static [u8] = Box::leak(fixed_response(OPENAI_JSON).into_boxed_slice());
    let anthropic: &'static [u8] = Box::leak(fixed_response(ANTHROPIC_JSON).into_boxed_slice());
    eprintln!("fast_upstream listening on {listen}");
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = serve(sock, openai, anthropic).await;
        });
    }
}
