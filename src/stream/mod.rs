//! Stream framing: SSE parsing now; per-format stream state machines as translation grows.

pub mod sse;
