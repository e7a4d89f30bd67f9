//! Test support shared by Hearth's crates (a dev-dependency only): where the test models are
//! ([`models`]), an in-process server speaking Qdrant's gRPC protocol ([`qdrant`]) and the
//! behaviour suite every vector store passes ([`store_suite`], [`vector_store_tests!`]).

pub mod mcp;
pub mod models;
pub mod qdrant;
pub mod store_suite;
