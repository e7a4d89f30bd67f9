//! `hearth-server fetch`: download weights into the cache and verify them.

use std::path::PathBuf;

use clap::Args;

/// Flags of `fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// hf://ORG/REPO/FILE[@REV], https://…, file:///PATH or pvc://CLAIM/PATH.
    pub uri: String,
    /// Expected SHA-256 (hex); a mismatch deletes the file and fails.
    #[arg(long)]
    pub sha256: Option<String>,
    /// Cache directory (default: $HEARTH_CACHE/models, else ~/.cache/hearth/models).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `fetch`.
pub async fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let cache = args.cache.unwrap_or_else(crate::fetch::model_cache_dir);
    let progress = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fetched = crate::fetch::fetch(&args.uri, args.sha256.as_deref(), &cache, progress).await?;
    if fetched.downloaded_bytes == 0 {
        tracing::info!(path = %fetched.path.display(), "already present and verified");
    } else {
        tracing::info!(path = %fetched.path.display(), bytes = fetched.downloaded_bytes, "downloaded and verified");
    }
    println!("{}", fetched.path.display());
    Ok(())
}
