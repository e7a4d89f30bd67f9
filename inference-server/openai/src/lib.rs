//! The OpenAI protocol as Hearth speaks it: the wire types clients send and receive
//! ([`wire`]) and the one error table ([`ApiError`]) every Hearth endpoint answers with. The
//! HTTP API, the Cascade router and the agent runtime's model client share it, and nothing in
//! it knows how an answer is computed.

mod error;
pub mod wire;

use std::time::{SystemTime, UNIX_EPOCH};

pub use error::{ApiError, EngineFailure};

/// Seconds since the Unix epoch: the `created` field of OpenAI objects.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The model a response was for, when it names a served one (bounds the metric labels): set
/// by whoever answered in the response's extensions, read by the server's request metrics.
#[derive(Clone)]
pub struct ServedName(pub String);
