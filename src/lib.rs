//! switchyard: an AI gateway on Pingora.
//!
//! A request's path: `proxy` (one request, from its header to its access line) reads the
//! `snapshot` compiled from the `store`; operators change the store through `admin`.
//! `entities` defines what is stored.

pub mod admin;
pub mod auth;
pub mod config;
pub mod demo;
pub mod entities;
pub mod error;
pub mod hash;
pub mod lifecycle;
pub mod mcp;
pub mod policy;
pub mod providers;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod translate;
pub mod upstream;
