//! lmi-agent: the per-host node agent of a Lambda Managed Instances style platform.
//!
//! Read `docs/ARCHITECTURE.md` for the life of an invoke; each module holds one concept.

pub mod broker;
pub mod capacity;
pub mod catalog;
pub mod code;
pub mod config;
pub mod invocation;
pub mod runtime_api;
pub mod spec;
