//! `hearth-server fetch`: brings model weights into a local cache and verifies them.
//!
//! Sources: `file:///PATH` (verified in place), `https://…` and `http://…` (streamed to the
//! cache), `hf://ORG/REPO/FILE[@REVISION]` (Hugging Face's resolve URL under `HF_ENDPOINT`,
//! with `HF_TOKEN` when set), `pvc://CLAIM/PATH` (a claim the operator mounts at
//! `/pvc/CLAIM`). A verified file already in the cache is not downloaded again. A download
//! lands in `NAME.partial` and is renamed only after its SHA-256 checks out, so a crash or a
//! bad checksum never leaves a file that looks complete.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URI's scheme or shape is not supported.
    #[error("{uri}: {reason}")]
    Unsupported {
        /// The URI.
        uri: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("GET {url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The network failed.
    #[error("downloading {url}: {source}")]
    Network {
        /// The URL.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The file's checksum differs from the expected one.
    #[error("{path}: SHA-256 mismatch: expected {expected}, found {found}; the file was removed")]
    Checksum {
        /// The file.
        path: String,
        /// Expected digest.
        expected: String,
        /// Actual digest.
        found: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.display().to_string(), source }
}

pub use hearth_crds::runtime::model_cache_dir;

/// Where a URI's bytes come from.
#[derive(Debug, PartialEq, Eq)]
pub enum Location {
    /// A local file or directory.
    Local(PathBuf),
    /// A URL to download, and the file name to store it under.
    Remote {
        /// The URL.
        url: String,
        /// The file name in the cache.
        file_name: String,
    },
}

/// Resolves a model URI. `hf_endpoint` is normally `https://huggingface.co`.
pub fn resolve(uri: &str, hf_endpoint: &str) -> Result<Location, FetchError> {
    let unsupported = |reason: &str| FetchError::Unsupported { uri: uri.to_owned(), reason: reason.to_owned() };
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| unsupported("expected SCHEME://…"))?;
    let last_segment = |s: &str| s.rsplit('/').next().filter(|n| !n.is_empty()).map(str::to_owned);
    match scheme {
        "file" => Ok(Location::Local(PathBuf::from(rest))),
        "pvc" => {
            let (claim, path) = rest.split_once('/').ok_or_else(|| unsupported("expected pvc://CLAIM/PATH"))?;
            Ok(Location::Local(Path::new("/pvc").join(claim).join(path)))
        }
        "http" | "https" => {
            let file_name = last_segment(rest.split(['?', '#']).next().unwrap_or(rest))
                .ok_or_else(|| unsupported("the URL names no file"))?;
            Ok(Location::Remote { url: uri.to_owned(), file_name })
        }
        "hf" => {
            let (path, revision) = rest.split_once('@').unwrap_or((rest, "main"));
            let mut parts = path.splitn(3, '/');
            let (Some(org), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(unsupported("expected hf://ORG/REPO/FILE (a directory needs one URI per file)"));
            };
            let file_name = last_segment(file).ok_or_else(|| unsupported("the URI names no file"))?;
            let endpoint = hf_endpoint.trim_end_matches('/');
            Ok(Location::Remote { url: format!("{endpoint}/{org}/{repo}/resolve/{revision}/{file}"), file_name })
        }
        "s3" => Err(unsupported("s3:// is not supported yet; mirror the file over https or a PVC")),
        _ => Err(unsupported("supported schemes are file, pvc, http, https and hf")),
    }
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io_error(path))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn verify(path: &Path, expected: Option<&str>) -> Result<(), FetchError> {
    let Some(expected) = expected else { return Ok(()) };
    let found = sha256_file(path)?;
    if found.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        let _ = std::fs::remove_file(path);
        Err(FetchError::Checksum { path: path.display().to_string(), expected: expected.to_owned(), found })
    }
}

/// What a fetch did.
#[derive(Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The verified file.
    pub path: PathBuf,
    /// Bytes downloaded (0 when already present or local).
    pub downloaded_bytes: u64,
}

/// Fetches `uri` into `cache` (when remote) and verifies `sha256` when given. A file in the
/// cache with a matching checksum (or, without a checksum, any complete file) is reused.
pub async fn fetch(uri: &str, sha256: Option<&str>, cache: &Path, progress: bool) -> Result<Fetched, FetchError> {
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    match resolve(uri, &endpoint)? {
        Location::Local(path) => {
            if !path.exists() {
                return Err(FetchError::Io {
                    path: path.display().to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            if path.is_file() {
                verify(&path, sha256)?;
            }
            Ok(Fetched { path, downloaded_bytes: 0 })
        }
        Location::Remote { url, file_name } => {
            std::fs::create_dir_all(cache).map_err(io_error(cache))?;
            let target = cache.join(&file_name);
            if target.is_file() && verify(&target, sha256).is_ok() {
                return Ok(Fetched { path: target, downloaded_bytes: 0 });
            }
            let partial = cache.join(format!("{file_name}.partial"));
            let downloaded = download(&url, &partial, progress).await?;
            verify(&partial, sha256)?;
            std::fs::rename(&partial, &target).map_err(io_error(&target))?;
            Ok(Fetched { path: target, downloaded_bytes: downloaded })
        }
    }
}

async fn download(url: &str, to: &Path, progress: bool) -> Result<u64, FetchError> {
    let network = |source| FetchError::Network { url: url.to_owned(), source };
    let client = reqwest::Client::builder()
        .user_agent(concat!("hearth-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(network)?;
    let mut request = client.get(url);
    if let (Ok(token), true) = (std::env::var("HF_TOKEN"), url.contains("/resolve/")) {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(network)?;
    if !response.status().is_success() {
        return Err(FetchError::Status { url: url.to_owned(), status: response.status().as_u16() });
    }
    let total = response.content_length();
    let bar = if progress {
        let bar = indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        {
            bar.set_style(style);
        }
        bar.set_message(url.rsplit('/').next().unwrap_or(url).to_owned());
        Some(bar)
    } else {
        None
    };
    let mut file = std::fs::File::create(to).map_err(io_error(to))?;
    let mut written = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(network)?;
        file.write_all(&chunk).map_err(io_error(to))?;
        written += chunk.len() as u64;
        if let Some(bar) = &bar {
            bar.set_position(written);
        }
    }
    file.sync_all().map_err(io_error(to))?;
    if let Some(bar) = bar {
        bar.finish();
    }
    if let Some(total) = total
        && written != total
    {
        return Err(FetchError::Io {
            path: to.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the server promised {total} bytes and sent {written}"),
            ),
        });
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_supported_scheme() {
        let hf = "https://hub.example";
        assert_eq!(
            resolve("hf://unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf", hf).unwrap(),
            Location::Remote {
                url: "https://hub.example/unsloth/gemma-3-270m-it-GGUF/resolve/main/gemma-3-270m-it-Q4_K_M.gguf".into(),
                file_name: "gemma-3-270m-it-Q4_K_M.gguf".into()
            }
        );
        assert_eq!(
            resolve("hf://org/repo/sub/dir/model.gguf@v2", hf).unwrap(),
            Location::Remote {
                url: "https://hub.example/org/repo/resolve/v2/sub/dir/model.gguf".into(),
                file_name: "model.gguf".into()
            }
        );
        assert_eq!(resolve("file:///models/m.gguf", hf).unwrap(), Location::Local("/models/m.gguf".into()));
        assert_eq!(resolve("pvc://weights/llm/m.gguf", hf).unwrap(), Location::Local("/pvc/weights/llm/m.gguf".into()));
        assert_eq!(
            resolve("https://mirror.example/a/m.gguf?sig=1", hf).unwrap(),
            Location::Remote { url: "https://mirror.example/a/m.gguf?sig=1".into(), file_name: "m.gguf".into() }
        );
        for bad in ["s3://bucket/key", "ftp://x/y", "hf://org/repo", "no-scheme", "https://host/"] {
            assert!(resolve(bad, hf).is_err(), "{bad} should be refused");
        }
    }
}
