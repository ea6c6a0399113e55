//! The AWS event-stream binary framing (`application/vnd.amazon.eventstream`), as Bedrock's
//! ConverseStream sends it.
//!
//! A frame, all integers big-endian: `total_len u32 | headers_len u32 | prelude_crc u32 |
//! headers | payload | message_crc u32`, where the prelude CRC covers the first 8 bytes and
//! the message CRC everything before it (CRC-32, IEEE). A header is `name_len u8 | name |
//! type u8 | value`. Frames may span network reads or share one: bytes are buffered until a
//! whole frame is there, and nothing beyond the current frame is kept.

use bytes::{Buf, Bytes, BytesMut};

/// Frames larger than this are refused (Bedrock's own limit is 16 MiB).
const MAX_FRAME: usize = 16 << 20;
const PRELUDE: usize = 12;

/// One decoded frame: the `:message-type`, `:event-type`/`:exception-type` string headers and
/// the payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub message_type: String,
    /// `:event-type` for events, `:exception-type` for exceptions.
    pub kind: String,
    pub payload: Bytes,
}

impl Message {
    /// The frame as one JSON object text in the shape Bedrock's JSON APIs use:
    /// `{"<eventType>": payload}`, or `{"exception": {"type": .., "message": ..}}`.
    pub fn to_json(&self) -> Result<String, Malformed> {
        let payload = std::str::from_utf8(&self.payload).map_err(|_| Malformed("payload"))?;
        let payload = if payload.trim().is_empty() {
            "{}"
        } else {
            payload
        };
        let kind = serde_json::to_string(&self.kind).map_err(|_| Malformed("header"))?;
        if self.message_type == "event" {
            return Ok(["{", &kind, ":", payload, "}"].concat());
        }
        let message = serde_json::from_str::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("message").or_else(|| v.get("Message")).cloned())
            .unwrap_or_else(|| serde_json::Value::String(payload.to_string()));
        Ok(format!(
            "{{\"exception\":{{\"type\":{kind},\"message\":{message}}}}}"
        ))
    }
}

/// A frame that cannot be read: what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held for an incomplete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes; returns the frames they complete.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Message>, Malformed> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while self.buf.len() >= PRELUDE {
            let total =
                u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
            let headers_len =
                u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
            let prelude_crc =
                u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]]);
            if crc32fast::hash(&self.buf[..8]) != prelude_crc {
                return Err(Malformed("prelude checksum"));
            }
            if total > MAX_FRAME || total < PRELUDE + 4 + headers_len {
                return Err(Malformed("frame length"));
            }
            if self.buf.len() < total {
                break;
            }
            let frame = self.buf.split_to(total).freeze();
            let crc = u32::from_be_bytes([
                frame[total - 4],
                frame[total - 3],
                frame[total - 2],
                frame[total - 1],
            ]);
            if crc32fast::hash(&frame[..total - 4]) != crc {
                return Err(Malformed("message checksum"));
            }
            let headers = frame.slice(PRELUDE..PRELUDE + headers_len);
            let mut msg = read_headers(headers)?;
            msg.payload = frame.slice(PRELUDE + headers_len..total - 4);
            out.push(msg);
        }
        Ok(out)
    }
}

/// Reads the headers, keeping the three string headers a stream consumer needs.
fn read_headers(mut h: Bytes) -> Result<Message, Malformed> {
    let bad = Malformed("header");
    let mut msg = Message::default();
    while h.has_remaining() {
        let name_len = h.get_u8() as usize;
        if h.remaining() < name_len + 1 {
            return Err(bad);
        }
        let name = h.split_to(name_len);
        let fixed = match h.get_u8() {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            _ => return Err(bad),
        };
        let len = match fixed {
            Some(n) => n,
            None if h.remaining() >= 2 => h.get_u16() as usize,
            None => return Err(bad),
        };
        if h.remaining() < len {
            return Err(bad);
        }
        let value = h.split_to(len);
        let text = || String::from_utf8(value.to_vec()).map_err(|_| Malformed("header"));
        match &name[..] {
            b":message-type" => msg.message_type = text()?,
            b":event-type" | b":exception-type" => msg.kind = text()?,
            _ => {}
        }
    }
    Ok(msg)
}

/// Encodes one frame with string headers (for fakes, tests and benches).
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut hs = Vec::new();
    for (name, value) in headers {
        hs.push(name.len() as u8);
        hs.extend_from_slice(name.as_bytes());
        hs.push(7);
        hs.extend_from_slice(&(value.len() as u16).to_be_bytes());
        hs.extend_from_slice(value.as_bytes());
    }
    let total = PRELUDE + hs.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(hs.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&hs);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// An event frame as Bedrock sends it.
pub fn encode_event(event_type: &str, payload: &str) -> Vec<u8> {
    encode(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_frame_decodes() {
        // From the AWS event-stream reference: one string header, `{'foo':'bar'}` payload.
        let frame = hex::decode(
            "0000003d0000002007fd83960c636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e7b27666f6f273a27626172277d8d9c08b1",
        )
        .unwrap();
        let msgs = Decoder::new().feed(&frame).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(&msgs[0].payload[..], b"{'foo':'bar'}");
        assert_eq!(
            encode(&[("content-type", "application/json")], b"{'foo':'bar'}"),
            frame
        );
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let mut input = encode_event("messageStart", r#"{"role":"assistant"}"#);
        input.extend(encode_event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Grüße 😀"}}"#,
        ));
        input.extend(encode(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
            ],
            br#"{"message":"slow down"}"#,
        ));
        let whole = Decoder::new().feed(&input).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[2].kind, "throttlingException");
        for cut in 0..=input.len() {
            let mut d = Decoder::new();
            let mut got = d.feed(&input[..cut]).unwrap();
            got.extend(d.feed(&input[cut..]).unwrap());
            assert_eq!(got, whole, "split at {cut}");
            assert_eq!(d.pending(), 0);
        }
        assert_eq!(
            whole[1].to_json().unwrap(),
            r#"{"contentBlockDelta":{"contentBlockIndex":0,"delta":{"text":"Grüße 😀"}}}"#
        );
        assert_eq!(
            whole[2].to_json().unwrap(),
            r#"{"exception":{"type":"throttlingException","message":"slow down"}}"#
        );
    }

    #[test]
    fn corrupt_frames_are_refused() {
        let frame = encode_event("messageStop", r#"{"stopReason":"end_turn"}"#);
        let mut bad = frame.clone();
        let last = bad.len() - 6;
        bad[last] ^= 1;
        assert_eq!(
            Decoder::new().feed(&bad),
            Err(Malformed("message checksum"))
        );
        let mut bad = frame.clone();
        bad[2] ^= 1;
        assert_eq!(
            Decoder::new().feed(&bad),
            Err(Malformed("prelude checksum"))
        );
        // A consistent prelude claiming 1 GiB.
        let mut huge = (1u32 << 30).to_be_bytes().to_vec();
        huge.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&huge);
        huge.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(Decoder::new().feed(&huge), Err(Malformed("frame length")));
    }
}
