//! Property tests for bad input (fuzz targets that run as ordinary tests): request parsing and
//! the real HTTP router, chat-template rendering, the GGUF tokenizers and the knowledge-base
//! splitter, each fed generated input and checked against what the code promises.
//!
//! Runs are reproducible: every property starts from a fixed seed and a capped case count, so
//! a failure prints the same shrunk input on every run. `PROPTEST_RNG_SEED=<n>` explores other
//! seeds and `PROPTEST_CASES=<n>` runs more (or fewer) cases.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod properties {
    pub mod chat_template;
    pub mod http;
    pub mod requests;
    pub mod splitter;
    pub mod text;
    pub mod tokenizer;
}

use std::path::PathBuf;

use proptest::test_runner::{Config, RngSeed};

/// Cases per property when `PROPTEST_CASES` is not set.
pub const CASES: u32 = 256;

/// The seed every property starts from when `PROPTEST_RNG_SEED` is not set.
const SEED: u64 = 0x4845_4152_5448; // "HEARTH"

/// A proptest configuration: `cases` cases from the fixed seed, no regression files (the seed
/// already makes a failure reproducible), both overridable from the environment.
pub fn config(cases: u32) -> Config {
    let from_env = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() { from_env.cases } else { cases },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(SEED)
        },
        failure_persistence: None,
        ..from_env
    }
}

/// A test model fetched by `scripts/fetch-models.py`; missing means the cache was not populated.
pub fn model_path(relative: &str) -> PathBuf {
    hearth_testkit::models::required(relative)
}
