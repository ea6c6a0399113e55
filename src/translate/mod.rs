//! Translation between client formats and provider formats (SPEC §3 step 8). One file per
//! pair; pure functions and per-stream state machines, no I/O.

pub mod anthropic;
