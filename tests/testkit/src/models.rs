//! Where tests find the models `scripts/fetch-models.py` put in the cache.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;

/// A file (or directory) in the model cache.
pub fn path(file: &str) -> PathBuf {
    hearth_crds::runtime::model_cache_dir().join(file)
}

/// A model of the CI "small" set: missing means the cache was not populated, said plainly.
pub fn required(file: &str) -> PathBuf {
    let path = path(file);
    assert!(path.exists(), "{} is missing: run `scripts/fetch-models.py` (or set HEARTH_CACHE)", path.display());
    path
}

/// A model outside the CI set: `None`, with a note, when absent.
pub fn optional(file: &str) -> Option<PathBuf> {
    let path = path(file);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipping: {} is absent (scripts/fetch-models.py --set all)", path.display());
        None
    }
}

/// The GGUF metadata of a file.
pub fn gguf(path: &Path) -> Content {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    Content::read(&mut f).unwrap_or_else(|e| panic!("read GGUF {}: {e}", path.display()))
}
