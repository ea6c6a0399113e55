//! Which registries may serve a request, and which one tries first.

pub mod resolve;
pub mod select;

pub use resolve::{resolve, Candidate};
