//! An incremental Server-Sent Events parser (WHATWG rules, as the official SDKs read them).
//!
//! Bytes are buffered across reads and split into lines on LF, CRLF or a lone CR (a CR at the
//! end of one read waits for the next, which may start with its LF). Lines are decoded as UTF-8
//! only once complete, so a character split between reads is never mangled. `:` lines are
//! comments; `data:` lines join with `\n`; a blank line ends the event. Each event keeps the
//! raw bytes it came from, so a pass-through relay forwards exactly what it received, one
//! whole event at a time.

use bytes::{Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`; `None` when the block had no data line (a comment
    /// or keep-alive).
    pub data: Option<String>,
}

/// A parse failure: a line that is not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed;

#[derive(Debug, Default)]
pub struct SseParser {
    buf: BytesMut,
    /// Where the next line starts in `buf`.
    line_start: usize,
    /// The event being assembled.
    current: Event,
    /// A lone CR ended the last line; an LF first in the next read belongs to it.
    pending_cr: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events completed by them, each with its raw bytes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<(Event, Bytes)>, Malformed> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut i = self.line_start;
        while i < self.buf.len() {
            let b = self.buf[i];
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' && i == self.line_start {
                    // The LF of a CRLF split across reads.
                    i += 1;
                    self.line_start = i;
                    continue;
                }
            }
            if b != b'\n' && b != b'\r' {
                i += 1;
                continue;
            }
            let line_end = i;
            let mut next = i + 1;
            if b == b'\r' {
                match self.buf.get(i + 1) {
                    Some(b'\n') => next = i + 2,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            let line =
                std::str::from_utf8(&self.buf[self.line_start..line_end]).map_err(|_| Malformed)?;
            let done = apply_line(&mut self.current, line);
            self.line_start = next;
            i = next;
            if done {
                let raw = self.buf.split_to(next).freeze();
                self.line_start = 0;
                i = 0;
                out.push((std::mem::take(&mut self.current), raw));
            }
        }
        if self.buf.is_empty() {
            // Nothing left over: let go of the buffer, which the events' raw bytes share, so
            // a stream idle between events holds none (the next read allocates its own).
            self.buf = BytesMut::new();
        }
        Ok(out)
    }

    /// Bytes received but not yet part of a complete event.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Applies one line; true when it ended an event.
fn apply_line(current: &mut Event, line: &str) -> bool {
    if line.is_empty() {
        return true;
    }
    if line.starts_with(':') {
        return false;
    }
    let (field, value) = match line.split_once(':') {
        Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
        None => (line, ""),
    };
    match field {
        "data" => match &mut current.data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => current.data = Some(value.to_string()),
        },
        "event" => current.event = Some(value.to_string()),
        _ => {} // id, retry and unknown fields are ignored
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], splits: &[usize]) -> (Vec<Event>, Vec<u8>) {
        let mut p = SseParser::new();
        let mut events = Vec::new();
        let mut raw = Vec::new();
        let mut last = 0;
        for &s in splits.iter().chain(std::iter::once(&input.len())) {
            for (e, r) in p.feed(&input[last..s]).unwrap() {
                events.push(e);
                raw.extend_from_slice(&r);
            }
            last = s;
        }
        (events, raw)
    }

    const SAMPLE: &str = "event: message_start\ndata: {\"a\":\"é😀\"}\n\n: keep-alive\n\ndata:x\r\ndata: y\r\n\r\nid: 7\nretry: 10\ndata: z\r\rdata: [DONE]\n\n";

    fn expected() -> Vec<Event> {
        vec![
            Event {
                event: Some("message_start".into()),
                data: Some("{\"a\":\"é😀\"}".into()),
            },
            Event {
                event: None,
                data: None,
            },
            Event {
                event: None,
                data: Some("x\ny".into()),
            },
            Event {
                event: None,
                data: Some("z".into()),
            },
            Event {
                event: None,
                data: Some("[DONE]".into()),
            },
        ]
    }

    #[test]
    fn parses_fields_comments_and_line_endings() {
        let (events, raw) = all(SAMPLE.as_bytes(), &[]);
        assert_eq!(events, expected());
        assert_eq!(raw, SAMPLE.as_bytes());
    }

    #[test]
    fn every_single_split_point_gives_the_same_events_and_bytes() {
        let input = SAMPLE.as_bytes();
        for s in 0..=input.len() {
            let (events, raw) = all(input, &[s]);
            assert_eq!(events, expected(), "split at {s}");
            assert_eq!(raw, input, "split at {s}");
        }
    }

    #[test]
    fn random_splits_give_the_same_events() {
        let input = SAMPLE.as_bytes();
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            let mut splits = Vec::new();
            let mut at = 0;
            while at < input.len() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                at += 1 + (seed % 9) as usize;
                if at < input.len() {
                    splits.push(at);
                }
            }
            assert_eq!(
                all(input, &splits),
                (expected(), input.to_vec()),
                "{splits:?}"
            );
        }
    }

    #[test]
    fn incomplete_events_wait_and_invalid_utf8_is_malformed() {
        let mut p = SseParser::new();
        assert!(p.feed(b"data: partial").unwrap().is_empty());
        assert_eq!(p.pending(), 13);
        assert!(p.feed(b"\xff\n\n").is_err());
    }

    /// An open stream keeps its parser between events: with no partial event left it holds
    /// no buffer (a buffer reclaimed for a smaller event would keep the room of the largest),
    /// while a partial one keeps its bytes.
    #[test]
    fn a_parser_between_events_holds_no_buffer() {
        let mut p = SseParser::new();
        let big = format!("data: {}\n\n", "x".repeat(400));
        assert_eq!(p.feed(big.as_bytes()).unwrap().len(), 1);
        assert_eq!(p.buf.capacity(), 0);
        let events = p.feed(b"data: {\"a\":1}\n\ndata: par").unwrap();
        assert_eq!(events.len(), 1);
        drop(events);
        assert!(p.buf.capacity() >= 9, "the partial event is kept");
        let events = p.feed(b"tial\n\n").unwrap();
        assert_eq!(events[0].0.data.as_deref(), Some("partial"));
        assert_eq!(&events[0].1[..], b"data: partial\n\n");
        drop(events);
        assert_eq!(p.feed(b"data: small\n\n").unwrap().len(), 1);
        assert_eq!(p.buf.capacity(), 0);
        assert_eq!(p.pending(), 0);
    }
}
