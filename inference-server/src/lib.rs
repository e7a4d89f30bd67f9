//! hearth-server: candle backends behind an OpenAI-compatible API.
//!
//! Layers point one way: api → registry → engine → backend.

pub mod api;
pub mod backend;
pub mod cli;
pub mod engine;
pub mod fetch;
pub mod registry;
#[cfg(test)]
mod test_models;
