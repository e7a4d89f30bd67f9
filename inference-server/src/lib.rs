//! hearth-server: candle backends behind an OpenAI-compatible API.
//!
//! Layers point one way: api → registry → engine → backend; api → cascade, whose stages are
//! other OpenAI endpoints (or this process's own); api → agent, whose model and delegated
//! agents are OpenAI endpoints too, and whose retrieval uses the knowledge bases (kb).

pub mod agent;
pub mod api;
pub mod backend;
pub mod cascade;
pub mod cli;
pub mod engine;
pub mod fetch;
pub mod kb;
pub mod local;
pub mod registry;
#[cfg(test)]
mod test_models;
