//! Documents in: a directory tree (a PVC path or a mounted ConfigMap) or a list of web pages,
//! read into plain text for the splitter.
//!
//! Loaders never fail as a whole and never panic: whatever cannot be read becomes an entry in
//! [`LoadReport::skipped`] with the reason, and the rest loads.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{StatusCode, Url, header};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::html::html_to_text;
use super::robots::{MAX_ROBOTS_BYTES, RobotsRules, RobotsTxt};

/// What kind of text a document holds, from its file extension or content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Media {
    /// Markdown (`.md`, `.markdown`, `text/markdown`): headings label chunks.
    Markdown,
    /// Plain text (`.txt`, `.text`, `.rst`, `text/plain`).
    Text,
    /// HTML (`.html`, `.htm`, `text/html`), converted to text with headings as `#` lines.
    Html,
    /// One record of a JSON Lines file (`.jsonl`, `.ndjson`).
    JsonLines,
}

/// One loaded document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Stable identity: the path relative to the loaded root (`/`-separated), `path#L<n>` for a
    /// JSON Lines record, or the URL as given.
    pub source: String,
    /// The document's text (HTML already converted).
    pub text: String,
    /// SHA-256 of `text`, lowercase hex: unchanged documents can be skipped on re-ingestion.
    pub content_hash: String,
    /// What kind of text it was.
    pub media: Media,
}

impl Document {
    /// A document with its content hash computed.
    pub fn new(source: impl Into<String>, text: impl Into<String>, media: Media) -> Self {
        let text = text.into();
        let content_hash = format!("{:x}", Sha256::digest(text.as_bytes()));
        Self { source: source.into(), text, content_hash, media }
    }
}

/// What a loader produced: the documents, in a deterministic order, and what it skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Documents loaded, in load order.
    pub documents: Vec<Document>,
    /// `(source, reason)` for everything that was not loaded.
    pub skipped: Vec<(String, String)>,
}

impl LoadReport {
    fn skip(&mut self, source: impl Into<String>, reason: impl Into<String>) {
        self.skipped.push((source.into(), reason.into()));
    }
}

/// Default cap on one file or response: 10 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// How [`load_dir`] reads files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Files larger than this are skipped (default 10 MiB).
    pub max_file_bytes: u64,
    /// Fields tried in order for a JSON Lines record's text (default `text`, then `content`).
    pub jsonl_text_fields: Vec<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { max_file_bytes: DEFAULT_MAX_BYTES, jsonl_text_fields: vec!["text".to_owned(), "content".to_owned()] }
    }
}

/// Loads every supported file under `root`, recursively, in sorted path order (or `root` itself
/// when it is a file).
///
/// Hidden entries (names starting with `.`) are passed over silently; that includes the
/// `..data` and `..<timestamp>` entries of a mounted ConfigMap, whose keys are symlinks into
/// them. Symlinks are followed while their target stays inside `root`; those pointing outside
/// are skipped, as are files over the size limit, files that are not UTF-8, unsupported
/// extensions and anything that is not a regular file or directory.
pub fn load_dir(root: &Path, opts: &LoadOptions) -> LoadReport {
    let mut report = LoadReport::default();
    let shown = root.display().to_string();
    let canonical_root = match fs::canonicalize(root) {
        Ok(path) => path,
        Err(e) => {
            report.skip(shown, format!("cannot open the directory: {e}"));
            return report;
        }
    };
    let mut walk = Walk { root: &canonical_root, opts, visited: HashSet::from([canonical_root.clone()]), report };
    if canonical_root.is_dir() {
        walk.dir(&canonical_root, "");
    } else {
        // A single file (a PVC path may name one): its source is its file name.
        let name = root.file_name().map_or_else(|| shown.clone(), |name| name.to_string_lossy().into_owned());
        walk.entry(&canonical_root, name);
    }
    walk.report
}

struct Walk<'a> {
    /// Canonical root: symlink targets must lie under it.
    root: &'a Path,
    opts: &'a LoadOptions,
    /// Canonical directories already walked, so symlinked directories cannot loop.
    visited: HashSet<PathBuf>,
    report: LoadReport,
}

impl Walk<'_> {
    /// Walks directory `real` (a canonical path) whose sources are prefixed with `relative`.
    fn dir(&mut self, real: &Path, relative: &str) {
        let shown = if relative.is_empty() { "." } else { relative };
        let entries = match fs::read_dir(real) {
            Ok(entries) => entries,
            Err(e) => return self.report.skip(shown, format!("cannot list the directory: {e}")),
        };
        let mut names = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => names.push(entry.file_name()),
                Err(e) => self.report.skip(shown, format!("cannot list the directory: {e}")),
            }
        }
        names.sort();
        for name in names {
            let Some(name_text) = name.to_str() else {
                let lossy = name.to_string_lossy();
                self.report.skip(join(relative, &lossy), "the file name is not UTF-8");
                continue;
            };
            if name_text.starts_with('.') {
                continue;
            }
            let source = join(relative, name_text);
            self.entry(&real.join(&name), source);
        }
    }

    fn entry(&mut self, path: &Path, source: String) {
        let link = match fs::symlink_metadata(path) {
            Ok(metadata) => metadata.file_type().is_symlink(),
            Err(e) => return self.report.skip(source, format!("cannot read: {e}")),
        };
        let target = if link {
            match fs::canonicalize(path) {
                Ok(target) if target.starts_with(self.root) => target,
                Ok(_) => return self.report.skip(source, "symlink points outside the loaded directory"),
                Err(e) => return self.report.skip(source, format!("broken symlink: {e}")),
            }
        } else {
            path.to_path_buf()
        };
        let metadata = match fs::metadata(&target) {
            Ok(metadata) => metadata,
            Err(e) => return self.report.skip(source, format!("cannot read: {e}")),
        };
        if metadata.is_dir() {
            if self.visited.insert(target.clone()) {
                self.dir(&target, &source);
            } else {
                self.report.skip(source, "directory already loaded through another path");
            }
        } else if metadata.is_file() {
            self.file(&target, source, metadata.len());
        } else {
            self.report.skip(source, "not a regular file");
        }
    }

    fn file(&mut self, path: &Path, source: String, len: u64) {
        let extension = path_extension(&source);
        let Some(media) = media_for_extension(&extension) else {
            let reason = if extension.is_empty() {
                "unsupported file type (no extension)".to_owned()
            } else {
                format!("unsupported file type .{extension}")
            };
            return self.report.skip(source, reason);
        };
        let max = self.opts.max_file_bytes;
        if len > max {
            return self.report.skip(source, too_large(len, max));
        }
        let mut bytes = Vec::new();
        // The file may grow between stat and read: read at most one byte past the limit.
        let read = fs::File::open(path).and_then(|file| file.take(max.saturating_add(1)).read_to_end(&mut bytes));
        if let Err(e) = read {
            return self.report.skip(source, format!("cannot read: {e}"));
        }
        if bytes.len() as u64 > max {
            return self.report.skip(source, format!("file grew over the {max}-byte limit while being read"));
        }
        let text = match into_text(bytes) {
            Ok(text) => text,
            Err(reason) => return self.report.skip(source, reason),
        };
        match media {
            Media::JsonLines => self.json_lines(&source, &text),
            Media::Html => self.push(source, html_to_text(&text), media),
            Media::Markdown | Media::Text => self.push(source, text, media),
        }
    }

    fn json_lines(&mut self, source: &str, text: &str) {
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record_source = format!("{source}#L{}", number + 1);
            match json_text(line, &self.opts.jsonl_text_fields) {
                Ok(record_text) => self.push(record_source, record_text, Media::JsonLines),
                Err(reason) => self.report.skip(record_source, reason),
            }
        }
    }

    fn push(&mut self, source: String, text: String, media: Media) {
        if text.trim().is_empty() {
            self.report.skip(source, "no text");
        } else {
            self.report.documents.push(Document::new(source, text, media));
        }
    }
}

fn join(relative: &str, name: &str) -> String {
    if relative.is_empty() { name.to_owned() } else { format!("{relative}/{name}") }
}

/// The lowercased extension of the last path component, or "".
fn path_extension(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() => extension.to_ascii_lowercase(),
        _ => String::new(),
    }
}

fn media_for_extension(extension: &str) -> Option<Media> {
    match extension {
        "md" | "markdown" => Some(Media::Markdown),
        "txt" | "text" | "rst" => Some(Media::Text),
        "html" | "htm" | "xhtml" => Some(Media::Html),
        "jsonl" | "ndjson" => Some(Media::JsonLines),
        _ => None,
    }
}

fn too_large(len: u64, max: u64) -> String {
    format!("{len} bytes, over the {max}-byte limit")
}

/// Bytes as UTF-8 text without a byte-order mark, or why not.
fn into_text(bytes: Vec<u8>) -> Result<String, String> {
    let mut text = String::from_utf8(bytes)
        .map_err(|e| format!("not valid UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to()))?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// The text field of one JSON Lines record.
fn json_text(line: &str, fields: &[String]) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let serde_json::Value::Object(object) = value else {
        return Err("not a JSON object".to_owned());
    };
    for field in fields {
        match object.get(field) {
            Some(serde_json::Value::String(text)) => return Ok(text.clone()),
            Some(_) => return Err(format!("field {field:?} is not a string")),
            None => {}
        }
    }
    Err(format!(
        "no text field (looked for {})",
        fields.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ")
    ))
}

/// The User-Agent sent with every request; robots.txt groups are matched on `hearth-ingest`.
pub const USER_AGENT: &str = "hearth-ingest/0.1 (+https://github.com/hearth-dev/hearth)";

/// Longest `Crawl-delay` honoured, so one site cannot stall an ingestion run indefinitely.
pub const MAX_CRAWL_DELAY: Duration = Duration::from_secs(60);

/// How [`load_urls`] fetches pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebOptions {
    /// Sent as `User-Agent`; its product token (before `/`) selects the robots.txt group.
    pub user_agent: String,
    /// Least time between the end of one request to a host and the start of the next
    /// (default 1 s); a longer robots.txt `Crawl-delay` wins, up to [`MAX_CRAWL_DELAY`].
    pub min_host_interval: Duration,
    /// Responses larger than this are skipped (default 10 MiB); bodies are streamed and the
    /// download stops at the limit.
    pub max_response_bytes: u64,
    /// Limit on one request, body included (default 30 s).
    pub timeout: Duration,
    /// Limit on opening a connection (default 10 s).
    pub connect_timeout: Duration,
    /// Redirects followed per URL (default 5); each hop is checked against its host's robots.txt.
    pub max_redirects: usize,
}

impl Default for WebOptions {
    fn default() -> Self {
        Self {
            user_agent: USER_AGENT.to_owned(),
            min_host_interval: Duration::from_secs(1),
            max_response_bytes: DEFAULT_MAX_BYTES,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 5,
        }
    }
}

/// Fetches each URL (in order, one request at a time) and returns the pages as documents.
///
/// Only `http` and `https` are fetched. Each host's robots.txt is read first (RFC 9309: a 4xx
/// means no rules, a 5xx or a network failure means stay away); a URL it disallows is skipped
/// with the reason "disallowed by robots.txt". HTML is converted to text; `text/plain` and
/// `text/markdown` are kept as they are; other content types, non-2xx answers, bodies over the
/// size limit and non-UTF-8 bodies are skipped with the reason.
pub async fn load_urls(urls: &[String], opts: &WebOptions) -> LoadReport {
    let mut report = LoadReport::default();
    let client = reqwest::Client::builder()
        .user_agent(opts.user_agent.clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(opts.timeout)
        .connect_timeout(opts.connect_timeout)
        .build();
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            let reason = format!("cannot build the HTTP client: {}", describe(&e));
            for url in urls {
                report.skip(url.clone(), reason.clone());
            }
            return report;
        }
    };
    let mut crawler = Crawler { client, opts, last_done: HashMap::new(), robots: HashMap::new() };
    for url in urls {
        match crawler.load(url).await {
            Ok(document) => report.documents.push(document),
            Err(reason) => report.skip(url.clone(), reason),
        }
    }
    report
}

/// What a host's robots.txt says for us.
#[derive(Debug, Clone)]
enum HostRobots {
    Rules(RobotsRules),
    /// robots.txt could not be read (5xx or network error): RFC 9309 says keep off the host.
    Unreachable(String),
}

/// A response read into memory, up to a limit.
struct Fetched {
    status: StatusCode,
    content_type: Option<String>,
    location: Option<String>,
    body: Vec<u8>,
    /// The body was longer than the limit (declared or streamed) and was cut.
    over_limit: bool,
}

/// Per-run crawler state: when each host was last asked, and its robots.txt.
struct Crawler<'a> {
    client: reqwest::Client,
    opts: &'a WebOptions,
    /// Per origin (`scheme://host:port`), when the last request to it finished.
    last_done: HashMap<String, Instant>,
    robots: HashMap<String, HostRobots>,
}

impl Crawler<'_> {
    async fn load(&mut self, raw: &str) -> Result<Document, String> {
        let mut url = Url::parse(raw.trim()).map_err(|e| format!("invalid URL: {e}"))?;
        let mut redirects = 0;
        loop {
            check_scheme(&url)?;
            let rules = match self.robots_for(&url).await {
                HostRobots::Rules(rules) => rules,
                HostRobots::Unreachable(reason) => return Err(format!("robots.txt unreachable ({reason})")),
            };
            if !rules.allows(&path_and_query(&url)) {
                return Err("disallowed by robots.txt".to_owned());
            }
            let interval = self.opts.min_host_interval.max(rules.crawl_delay.unwrap_or_default().min(MAX_CRAWL_DELAY));
            let fetched = self.fetch(&url, self.opts.max_response_bytes, true, interval).await?;
            if fetched.status.is_redirection() {
                let location = fetched.location.ok_or_else(|| format!("HTTP {} without a Location", fetched.status))?;
                redirects += 1;
                if redirects > self.opts.max_redirects {
                    return Err(format!("more than {} redirects", self.opts.max_redirects));
                }
                url = url.join(&location).map_err(|e| format!("bad redirect to {location:?}: {e}"))?;
                continue;
            }
            if !fetched.status.is_success() {
                return Err(format!("HTTP {}", fetched.status));
            }
            if fetched.over_limit {
                return Err(format!("response over the {}-byte limit", self.opts.max_response_bytes));
            }
            let media = media_for_response(fetched.content_type.as_deref(), &url)?;
            let text = into_text(fetched.body)?;
            let text = if media == Media::Html { html_to_text(&text) } else { text };
            if text.trim().is_empty() {
                return Err("no text".to_owned());
            }
            return Ok(Document::new(raw, text, media));
        }
    }

    /// The robots.txt verdict for `url`'s host, fetched on first use.
    async fn robots_for(&mut self, url: &Url) -> HostRobots {
        let origin = origin(url);
        if let Some(known) = self.robots.get(&origin) {
            return known.clone();
        }
        let verdict = self.fetch_robots(url).await;
        self.robots.insert(origin, verdict.clone());
        verdict
    }

    async fn fetch_robots(&mut self, url: &Url) -> HostRobots {
        let mut robots_url = match url.join("/robots.txt") {
            Ok(robots_url) => robots_url,
            Err(e) => return HostRobots::Unreachable(e.to_string()),
        };
        // RFC 9309: follow at least five redirects, then treat the file as unavailable.
        for _ in 0..=5 {
            let fetched =
                match self.fetch(&robots_url, MAX_ROBOTS_BYTES as u64, false, self.opts.min_host_interval).await {
                    Ok(fetched) => fetched,
                    Err(reason) => return HostRobots::Unreachable(reason),
                };
            let status = fetched.status;
            if status.is_success() {
                let text = String::from_utf8_lossy(&fetched.body);
                return HostRobots::Rules(RobotsTxt::parse(&text).rules_for(&self.opts.user_agent));
            }
            if status.is_redirection() {
                let next = fetched.location.and_then(|location| robots_url.join(&location).ok());
                match next {
                    Some(next) if check_scheme(&next).is_ok() => {
                        robots_url = next;
                        continue;
                    }
                    _ => return HostRobots::Rules(RobotsRules::default()),
                }
            }
            // 429 is a 4xx, but it asks us to back off: treat it like a server error.
            if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
                return HostRobots::Rules(RobotsRules::default());
            }
            return HostRobots::Unreachable(format!("HTTP {status}"));
        }
        HostRobots::Rules(RobotsRules::default())
    }

    /// One GET, waiting first until `interval` has passed since the last request to the host
    /// finished. Reads at most `limit` body bytes of a 2xx answer; with `fail_fast`, a declared
    /// length over the limit is not downloaded at all.
    async fn fetch(&mut self, url: &Url, limit: u64, fail_fast: bool, interval: Duration) -> Result<Fetched, String> {
        let origin = origin(url);
        if let Some(&last) = self.last_done.get(&origin) {
            tokio::time::sleep_until(last + interval).await;
        }
        let result = self.fetch_now(url, limit, fail_fast).await;
        self.last_done.insert(origin, Instant::now());
        result
    }

    async fn fetch_now(&self, url: &Url, limit: u64, fail_fast: bool) -> Result<Fetched, String> {
        let timed_out = |e: &reqwest::Error| {
            if e.is_timeout() { format!("timed out after {:?}", self.opts.timeout) } else { describe(e) }
        };
        let mut response = self.client.get(url.clone()).send().await.map_err(|e| timed_out(&e))?;
        let status = response.status();
        let header_text =
            |name| response.headers().get(name).and_then(|v: &header::HeaderValue| v.to_str().ok()).map(str::to_owned);
        let content_type = header_text(header::CONTENT_TYPE);
        let location = header_text(header::LOCATION);
        let mut fetched = Fetched { status, content_type, location, body: Vec::new(), over_limit: false };
        if !status.is_success() {
            return Ok(fetched);
        }
        if fail_fast && response.content_length().is_some_and(|len| len > limit) {
            fetched.over_limit = true;
            return Ok(fetched);
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        while let Some(chunk) = response.chunk().await.map_err(|e| timed_out(&e))? {
            let room = limit - fetched.body.len();
            if chunk.len() > room {
                fetched.body.extend_from_slice(&chunk[..room]);
                fetched.over_limit = true;
                break;
            }
            fetched.body.extend_from_slice(&chunk);
        }
        Ok(fetched)
    }
}

fn check_scheme(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(format!("unsupported scheme {other:?}: only http and https are fetched")),
    }
}

fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The path and query, as robots.txt rules see them.
fn path_and_query(url: &Url) -> String {
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}

/// The media of a response from its Content-Type, falling back on the URL's extension when the
/// server sends none or a generic `text/plain` for a markdown file.
fn media_for_response(content_type: Option<&str>, url: &Url) -> Result<Media, String> {
    let by_extension = media_for_extension(&path_extension(url.path())).filter(|m| *m != Media::JsonLines);
    let Some(content_type) = content_type else {
        return by_extension.ok_or_else(|| "no Content-Type and no known file extension".to_owned());
    };
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "text/html" | "application/xhtml+xml" => Ok(Media::Html),
        "text/markdown" | "text/x-markdown" => Ok(Media::Markdown),
        "text/plain" if by_extension == Some(Media::Markdown) => Ok(Media::Markdown),
        "text/plain" => Ok(Media::Text),
        "" | "application/octet-stream" => {
            by_extension.ok_or_else(|| format!("unsupported content type {content_type:?}"))
        }
        _ => Err(format!("unsupported content type {content_type:?}")),
    }
}

/// An error and its sources, on one line.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::{Arc, Mutex};

    fn write(path: &Path, bytes: impl AsRef<[u8]>) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, bytes).unwrap();
    }

    fn sources(report: &LoadReport) -> Vec<&str> {
        report.documents.iter().map(|d| d.source.as_str()).collect()
    }

    fn skipped(report: &LoadReport) -> Vec<(&str, &str)> {
        report.skipped.iter().map(|(s, r)| (s.as_str(), r.as_str())).collect()
    }

    #[test]
    fn loads_a_tree_in_sorted_order_and_says_why_it_skipped_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("docs/b.txt"), "plain text");
        write(&root.join("docs/a.md"), "\u{feff}# A\n\nmarkdown");
        write(&root.join("docs/deeper/c.rst"), "rst text");
        write(&root.join("Guide.HTML"), "<h1>Guide</h1><script>x()</script><p>Body &amp; soul</p>");
        write(&root.join("big.md"), "x".repeat(2000));
        write(&root.join("latin1.txt"), b"caf\xe9");
        write(&root.join("image.png"), b"\x89PNG");
        write(&root.join("Makefile"), "all:");
        write(&root.join("empty.md"), " \n");
        write(&root.join(".hidden.md"), "hidden");
        write(&root.join(".git/notes.md"), "hidden dir");
        write(&outside.path().join("secret.md"), "outside");
        symlink(root.join("docs/a.md"), root.join("link.md")).unwrap();
        symlink(outside.path().join("secret.md"), root.join("escape.md")).unwrap();
        symlink(root.join("nowhere.md"), root.join("broken.md")).unwrap();
        symlink(root.join("docs"), root.join("docs/loop")).unwrap();
        let fifo = std::process::Command::new("mkfifo").arg(root.join("pipe.md")).status().unwrap();
        assert!(fifo.success());

        let opts = LoadOptions { max_file_bytes: 1000, ..LoadOptions::default() };
        let report = load_dir(root, &opts);
        assert_eq!(sources(&report), ["Guide.HTML", "docs/a.md", "docs/b.txt", "docs/deeper/c.rst", "link.md"]);
        let by_source = |s: &str| report.documents.iter().find(|d| d.source == s).unwrap();
        assert_eq!(by_source("Guide.HTML").text, "# Guide\n\nBody & soul");
        assert_eq!(by_source("Guide.HTML").media, Media::Html);
        assert_eq!(by_source("docs/a.md").text, "# A\n\nmarkdown", "byte-order mark dropped");
        assert_eq!(by_source("docs/a.md").media, Media::Markdown);
        assert_eq!(by_source("docs/b.txt").media, Media::Text);
        assert_eq!(by_source("link.md").text, by_source("docs/a.md").text);

        let skipped = skipped(&report);
        assert_eq!(skipped.len(), 9, "{skipped:#?}");
        let reason = |s: &str| skipped.iter().find(|(source, _)| *source == s).map(|(_, r)| *r).unwrap_or_default();
        assert_eq!(reason("Makefile"), "unsupported file type (no extension)");
        assert_eq!(reason("big.md"), "2000 bytes, over the 1000-byte limit");
        assert!(reason("broken.md").starts_with("broken symlink"), "{}", reason("broken.md"));
        assert_eq!(reason("docs/loop"), "directory already loaded through another path");
        assert_eq!(reason("empty.md"), "no text");
        assert_eq!(reason("escape.md"), "symlink points outside the loaded directory");
        assert_eq!(reason("image.png"), "unsupported file type .png");
        assert_eq!(reason("latin1.txt"), "not valid UTF-8 (first bad byte at offset 3)");
        assert_eq!(reason("pipe.md"), "not a regular file");
    }

    #[test]
    fn loads_a_mounted_config_map() {
        // Kubernetes' layout: keys are symlinks through `..data` into a timestamped directory.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let data = root.join("..2024_01_01_00_00_00.000000001");
        write(&data.join("handbook.md"), "# Handbook\n\nWelcome.");
        write(&data.join("faq.txt"), "Questions.");
        symlink("..2024_01_01_00_00_00.000000001", root.join("..data")).unwrap();
        symlink("..data/handbook.md", root.join("handbook.md")).unwrap();
        symlink("..data/faq.txt", root.join("faq.txt")).unwrap();

        let report = load_dir(root, &LoadOptions::default());
        assert_eq!(sources(&report), ["faq.txt", "handbook.md"]);
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert_eq!(report.documents[1].text, "# Handbook\n\nWelcome.");

        // Loading through a symlinked mount point works the same.
        let elsewhere = tempfile::tempdir().unwrap();
        symlink(root, elsewhere.path().join("mount")).unwrap();
        assert_eq!(load_dir(&elsewhere.path().join("mount"), &LoadOptions::default()), report);
    }

    #[test]
    fn splits_json_lines_into_records() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            r#"{"text": "first record"}"#,
            "",
            r#"{"content": "from the content field", "id": 7}"#,
            r#"{"title": "no text"}"#,
            "not json",
            r#"["an", "array"]"#,
            r#"{"text": 42}"#,
            r#"{"text": "   "}"#,
            r#"{"body": "custom field"}"#,
        ];
        write(&dir.path().join("records.jsonl"), lines.join("\n"));
        let report = load_dir(dir.path(), &LoadOptions::default());
        assert_eq!(sources(&report), ["records.jsonl#L1", "records.jsonl#L3"]);
        assert_eq!(report.documents[1].text, "from the content field");
        assert_eq!(report.documents[1].media, Media::JsonLines);
        let reasons: Vec<(&str, &str)> = skipped(&report);
        assert_eq!(reasons[0], ("records.jsonl#L4", r#"no text field (looked for "text", "content")"#));
        assert!(reasons[1].1.starts_with("invalid JSON"), "{:?}", reasons[1]);
        assert_eq!(reasons[2], ("records.jsonl#L6", "not a JSON object"));
        assert_eq!(reasons[3], ("records.jsonl#L7", r#"field "text" is not a string"#));
        assert_eq!(reasons[4], ("records.jsonl#L8", "no text"));

        let custom = LoadOptions { jsonl_text_fields: vec!["body".to_owned()], ..LoadOptions::default() };
        let report = load_dir(dir.path(), &custom);
        assert_eq!(sources(&report), ["records.jsonl#L9"]);
    }

    #[test]
    fn a_file_root_loads_that_file() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("handbook.md"), "# Handbook");
        let report = load_dir(&dir.path().join("handbook.md"), &LoadOptions::default());
        assert_eq!(sources(&report), ["handbook.md"]);
    }

    #[test]
    fn a_missing_root_is_reported_not_fatal() {
        let report = load_dir(Path::new("/nonexistent/hearth-kb"), &LoadOptions::default());
        assert!(report.documents.is_empty());
        assert_eq!(report.skipped.len(), 1);
        assert!(report.skipped[0].1.starts_with("cannot open the directory"), "{:?}", report.skipped);
    }

    #[test]
    fn content_hash_is_sha256_of_the_text() {
        let document = Document::new("a", "abc", Media::Text);
        assert_eq!(document.content_hash, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    /// A request the test server saw.
    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        user_agent: String,
        at: Instant,
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    /// Serves a small site on 127.0.0.1; `robots` is the robots.txt answer (status, body).
    async fn site(robots: (u16, &'static str)) -> (String, Log) {
        use axum::http::{HeaderMap, StatusCode as Status, Uri};
        use axum::response::{IntoResponse, Response};

        let log: Log = Arc::default();
        let seen = log.clone();
        let handler = move |uri: Uri, headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let user_agent = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                seen.lock().unwrap().push(Seen { path: uri.path().to_owned(), user_agent, at: Instant::now() });
                let html = [("content-type", "text/html; charset=utf-8")];
                let response: Response = match uri.path() {
                    "/robots.txt" => (Status::from_u16(robots.0).unwrap(), robots.1).into_response(),
                    "/page.html" => {
                        (html, "<html><head><title>T</title></head><body><h2>Intro</h2><p>Hello &amp; welcome</p></body></html>")
                            .into_response()
                    }
                    "/doc.md" => ([("content-type", "text/markdown")], "# Doc\n\nText.").into_response(),
                    "/raw/readme.md" => ([("content-type", "text/plain")], "# Readme").into_response(),
                    "/notes" => ([("content-type", "text/plain")], "Notes.").into_response(),
                    "/private/secret.md" => ([("content-type", "text/markdown")], "secret").into_response(),
                    "/image.png" => ([("content-type", "image/png")], "PNG").into_response(),
                    "/big.md" => ([("content-type", "text/markdown")], "x".repeat(5000)).into_response(),
                    "/latin1.txt" => ([("content-type", "text/plain")], b"caf\xe9".to_vec()).into_response(),
                    "/moved" => (Status::FOUND, [("location", "/doc.md")]).into_response(),
                    "/to-private" => (Status::FOUND, [("location", "/private/secret.md")]).into_response(),
                    "/slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        "late".into_response()
                    }
                    _ => Status::NOT_FOUND.into_response(),
                };
                response
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}"), log)
    }

    fn quick() -> WebOptions {
        WebOptions { min_host_interval: Duration::from_millis(20), ..WebOptions::default() }
    }

    #[tokio::test]
    async fn loads_pages_and_honours_robots_txt() {
        let (base, log) = site((200, "User-agent: *\nDisallow: /private\n\nUser-agent: other\nDisallow: /\n")).await;
        let urls: Vec<String> = [
            "/page.html",
            "/doc.md",
            "/raw/readme.md",
            "/notes",
            "/private/secret.md",
            "/missing",
            "/image.png",
            "/latin1.txt",
            "/moved",
            "/to-private",
        ]
        .iter()
        .map(|path| format!("{base}{path}"))
        .chain(["ftp://example.com/file.md".to_owned(), "not a url".to_owned()])
        .collect();
        let report = load_urls(&urls, &quick()).await;

        let documents: Vec<(&str, &str, Media)> =
            report.documents.iter().map(|d| (d.source.as_str(), d.text.as_str(), d.media)).collect();
        assert_eq!(
            documents,
            [
                (urls[0].as_str(), "## Intro\n\nHello & welcome", Media::Html),
                (urls[1].as_str(), "# Doc\n\nText.", Media::Markdown),
                (urls[2].as_str(), "# Readme", Media::Markdown),
                (urls[3].as_str(), "Notes.", Media::Text),
                (urls[8].as_str(), "# Doc\n\nText.", Media::Markdown),
            ]
        );
        let reasons: Vec<(&str, &str)> = skipped(&report);
        assert_eq!(reasons[0], (urls[4].as_str(), "disallowed by robots.txt"));
        assert_eq!(reasons[1], (urls[5].as_str(), "HTTP 404 Not Found"));
        assert_eq!(reasons[2], (urls[6].as_str(), r#"unsupported content type "image/png""#));
        assert_eq!(reasons[3], (urls[7].as_str(), "not valid UTF-8 (first bad byte at offset 3)"));
        assert_eq!(reasons[4], (urls[9].as_str(), "disallowed by robots.txt"), "redirect targets are checked too");
        assert_eq!(reasons[5].1, r#"unsupported scheme "ftp": only http and https are fetched"#);
        assert!(reasons[6].1.starts_with("invalid URL"), "{:?}", reasons[6]);
        assert_eq!(reasons.len(), 7);

        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.iter().filter(|s| s.path == "/robots.txt").count(), 1, "robots.txt is read once per host");
        assert_eq!(seen[0].path, "/robots.txt", "robots.txt comes first");
        assert!(seen.iter().all(|s| !s.path.starts_with("/private")), "a disallowed path was requested");
        assert!(seen.iter().all(|s| s.user_agent == USER_AGENT));
    }

    #[tokio::test]
    async fn waits_between_requests_to_one_host() {
        let (base, log) = site((404, "")).await;
        let interval = Duration::from_millis(300);
        let opts = WebOptions { min_host_interval: interval, ..WebOptions::default() };
        let urls = [format!("{base}/doc.md"), format!("{base}/notes")];
        let report = load_urls(&urls, &opts).await;
        assert_eq!(report.documents.len(), 2, "a robots.txt 404 allows everything: {:?}", report.skipped);
        let seen = log.lock().unwrap().clone();
        let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(paths, ["/robots.txt", "/doc.md", "/notes"]);
        for pair in seen.windows(2) {
            let gap = pair[1].at - pair[0].at;
            assert!(gap >= interval, "{} then {} only {gap:?} apart", pair[0].path, pair[1].path);
        }
    }

    #[tokio::test]
    async fn honours_a_longer_crawl_delay() {
        let (base, log) = site((200, "User-agent: hearth-ingest\nCrawl-delay: 0.4\n")).await;
        let urls = [format!("{base}/doc.md"), format!("{base}/notes")];
        let report = load_urls(&urls, &quick()).await;
        assert_eq!(report.documents.len(), 2);
        let seen = log.lock().unwrap().clone();
        assert!(seen[2].at - seen[1].at >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn skips_responses_over_the_size_limit() {
        let (base, _log) = site((404, "")).await;
        let opts = WebOptions { max_response_bytes: 1000, ..quick() };
        let report = load_urls(&[format!("{base}/big.md"), format!("{base}/doc.md")], &opts).await;
        assert_eq!(skipped(&report), [(format!("{base}/big.md").as_str(), "response over the 1000-byte limit")]);
        assert_eq!(report.documents.len(), 1);
    }

    #[tokio::test]
    async fn stops_reading_a_stream_at_the_size_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // A server that streams chunks without a Content-Length and counts what it sent.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let sent = Arc::new(Mutex::new(0usize));
        let counter = sent.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut request = vec![0; 4096];
                    let n = socket.read(&mut request).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&request[..n]).into_owned();
                    if request.starts_with("GET /robots.txt") {
                        let _ = socket.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
                        return;
                    }
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = format!("{:x}\r\n{}\r\n", 1024, "y".repeat(1024));
                    for _ in 0..10_000 {
                        if socket.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                        *counter.lock().unwrap() += 1024;
                    }
                    let _ = socket.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        let opts = WebOptions { max_response_bytes: 64 * 1024, ..quick() };
        let url = format!("http://{address}/stream.txt");
        let report = load_urls(std::slice::from_ref(&url), &opts).await;
        assert_eq!(skipped(&report), [(url.as_str(), "response over the 65536-byte limit")]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = *sent.lock().unwrap();
        assert!(sent < 10_000 * 1024, "the whole 10 MB stream was read ({sent} bytes)");
    }

    #[tokio::test]
    async fn keeps_off_a_host_whose_robots_txt_fails() {
        let (base, log) = site((503, "busy")).await;
        let urls = [format!("{base}/doc.md"), format!("{base}/notes")];
        let report = load_urls(&urls, &quick()).await;
        assert!(report.documents.is_empty());
        assert_eq!(report.skipped[0].1, "robots.txt unreachable (HTTP 503 Service Unavailable)");
        assert_eq!(log.lock().unwrap().len(), 1, "only robots.txt was asked");
    }

    #[tokio::test]
    async fn gives_up_on_slow_and_unreachable_servers() {
        let (base, _log) = site((404, "")).await;
        let opts = WebOptions { timeout: Duration::from_millis(300), ..quick() };
        let report = load_urls(&[format!("{base}/slow")], &opts).await;
        assert_eq!(report.skipped[0].1, "timed out after 300ms");

        // A port nobody listens on: robots.txt cannot be fetched, so the host is left alone.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let report = load_urls(&[format!("http://{address}/doc.md")], &quick()).await;
        assert!(report.skipped[0].1.starts_with("robots.txt unreachable ("), "{:?}", report.skipped);
    }

    #[test]
    fn media_follows_content_type_then_extension() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(media_for_response(Some("text/html; charset=UTF-8"), &url("http://h/a")), Ok(Media::Html));
        assert_eq!(media_for_response(Some("TEXT/MARKDOWN"), &url("http://h/a")), Ok(Media::Markdown));
        assert_eq!(media_for_response(Some("text/plain"), &url("http://h/a.MD")), Ok(Media::Markdown));
        assert_eq!(media_for_response(None, &url("http://h/a.txt")), Ok(Media::Text));
        assert!(media_for_response(None, &url("http://h/a")).is_err());
        assert!(media_for_response(Some("application/json"), &url("http://h/a.md")).is_err());
    }
}
