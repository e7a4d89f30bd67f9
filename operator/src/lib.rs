//! Hearth's Kubernetes operator: reconciles Model, Cascade, KnowledgeBase and Agent
//! resources into inference servers, routers, collections and ingestion jobs.
//!
//! Layers point one way: controller → builders → crds. `main.rs` only parses flags, elects
//! a leader and hands over to [`controller::run`].

pub mod builders;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod qdrant;
pub mod sizing;
pub mod web;
