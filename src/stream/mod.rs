//! Stream framing: SSE, and AWS event-stream for Bedrock.

pub mod eventstream;
pub mod sse;
