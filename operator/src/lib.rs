//! Hearth's Kubernetes operator: reconciles Model, Cascade, KnowledgeBase and Agent
//! resources into inference servers, routers, collections and ingestion jobs.
//!
//! Layers point one way: controllers → builders → crds. This release carries the sizing
//! model the Model controller uses to decide where a model fits.

pub mod sizing;
