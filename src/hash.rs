//! Hash maps read on every request: the compiled snapshot's indexes and the shared routing,
//! health and rate-limit state.
//!
//! They hash with foldhash instead of std's SipHash-1-3, seeded at random per map as std's
//! are. foldhash is not a keyed PRF like SipHash; these maps do not need one, because their
//! keys are ids, slugs and names that operators create (a client only looks them up). Under
//! callgrind the switch took a proxied request from ~101,500 to ~98,300 instructions.

pub type RandomState = foldhash::fast::RandomState;

/// `std::collections::HashMap` with foldhash.
pub type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

/// `dashmap::DashMap` with foldhash.
pub type DashMap<K, V> = dashmap::DashMap<K, V, RandomState>;
