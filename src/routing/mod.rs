//! Which registries may serve a request, and which one tries first.

pub mod health;
pub mod plan;
pub mod resolve;
pub mod select;

pub use resolve::{resolve, Candidate};
