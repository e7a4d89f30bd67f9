//! hearth-server: the process that serves a Hearth stack. It wires the layers below into one
//! binary: the HTTP API ([`api`]), local mode ([`local`]), model fetching ([`fetch`]) and the
//! command line ([`cli`]).
//!
//! The layers, each its own crate, depend one way (a lower crate never names a higher one):
//! `hearth-model` (transformer, encoder, tokenizers, templates) ← `hearth-engine` (queue,
//! batching, sampling, the registry of served models) ← this server; `hearth-openai` (wire
//! types, the error table) ← `hearth-cascade` (the router), `hearth-agent` (the ReAct runtime,
//! over `hearth-knowledge`) ← this server.

pub mod api;
pub mod cli;
pub mod embedder;
pub mod fetch;
pub mod local;
