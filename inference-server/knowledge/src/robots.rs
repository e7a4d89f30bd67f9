//! robots.txt as RFC 9309 reads it: groups of `User-agent` lines with `Allow`/`Disallow` rules,
//! the most specific (longest) matching rule deciding, `Allow` winning ties, `*` and `$` in
//! patterns, and the `*` group for crawlers no group names.

use std::time::Duration;

/// Most of a robots.txt file that is read; RFC 9309 asks crawlers to parse at least 500 KiB.
pub const MAX_ROBOTS_BYTES: usize = 512 * 1024;

/// A parsed robots.txt file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RobotsTxt {
    groups: Vec<Group>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Group {
    /// Lowercased product tokens from the group's `User-agent` lines (`*` for everyone).
    agents: Vec<String>,
    rules: Vec<Rule>,
    crawl_delay: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    allow: bool,
    /// Path pattern, percent-encoding normalised (non-ASCII encoded, hex digits upper case).
    pattern: String,
}

/// The rules of robots.txt that apply to one crawler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RobotsRules {
    rules: Vec<Rule>,
    /// The `Crawl-delay` the matching groups ask for, if any.
    pub crawl_delay: Option<Duration>,
}

impl RobotsTxt {
    /// Parses robots.txt text; lines it does not understand are ignored, as the RFC asks.
    pub fn parse(text: &str) -> Self {
        let text = text.get(..floor_boundary(text, MAX_ROBOTS_BYTES)).unwrap_or(text);
        let mut groups: Vec<Group> = Vec::new();
        // Whether the last group is still collecting User-agent lines (no rule seen yet).
        let mut collecting_agents = false;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some((key, value)) = line.split_once(':') else { continue };
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            match key.as_str() {
                "user-agent" => {
                    if !collecting_agents {
                        groups.push(Group::default());
                        collecting_agents = true;
                    }
                    if let Some(group) = groups.last_mut() {
                        group.agents.push(product_token(value));
                    }
                }
                "allow" | "disallow" => {
                    collecting_agents = false;
                    // Rules before any User-agent line belong to no group.
                    let Some(group) = groups.last_mut() else { continue };
                    if !value.is_empty() {
                        group.rules.push(Rule { allow: key == "allow", pattern: normalize_path(value) });
                    }
                }
                "crawl-delay" => {
                    collecting_agents = false;
                    let Some(group) = groups.last_mut() else { continue };
                    if let Ok(seconds) = value.parse::<f64>()
                        && seconds.is_finite()
                        && seconds >= 0.0
                    {
                        group.crawl_delay = Some(Duration::from_secs_f64(seconds.min(3600.0)));
                    }
                }
                _ => {}
            }
        }
        Self { groups }
    }

    /// The rules for the crawler whose product token is `agent` (`hearth-ingest`): every group
    /// naming it (case-insensitive), or else every `*` group, merged.
    pub fn rules_for(&self, agent: &str) -> RobotsRules {
        let agent = product_token(agent);
        let named: Vec<&Group> = self.groups.iter().filter(|g| g.agents.contains(&agent)).collect();
        let groups = if named.is_empty() {
            self.groups.iter().filter(|g| g.agents.iter().any(|a| a == "*")).collect()
        } else {
            named
        };
        RobotsRules {
            rules: groups.iter().flat_map(|g| g.rules.iter().cloned()).collect(),
            crawl_delay: groups.iter().filter_map(|g| g.crawl_delay).max(),
        }
    }
}

impl RobotsRules {
    /// Whether `path` (path plus query, as in the request line: `/docs/a?b=1`) may be fetched.
    pub fn allows(&self, path: &str) -> bool {
        if path == "/robots.txt" {
            return true;
        }
        let path = normalize_path(path);
        let mut best: Option<&Rule> = None;
        for rule in self.rules.iter().filter(|rule| matches(&rule.pattern, &path)) {
            best = match best {
                Some(current)
                    if current.pattern.len() > rule.pattern.len()
                        || (current.pattern.len() == rule.pattern.len() && current.allow) =>
                {
                    Some(current)
                }
                _ => Some(rule),
            };
        }
        best.is_none_or(|rule| rule.allow)
    }
}

/// The product token of a user agent (`hearth-ingest/0.1 (+https://...)` → `hearth-ingest`),
/// lowercased.
fn product_token(agent: &str) -> String {
    agent.trim().split(['/', ' ', '\t']).next().unwrap_or("").to_ascii_lowercase()
}

/// Whether `pattern` (with `*` for any run of characters and a final `$` for the end) matches
/// the start of `path`.
fn matches(pattern: &str, path: &str) -> bool {
    let (pattern, anchored) = match pattern.strip_suffix('$') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let (p, s) = (pattern.as_bytes(), path.as_bytes());
    let (mut pi, mut si) = (0, 0);
    // Position after the last `*` seen and where in `path` its match currently ends.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi == p.len() && (!anchored || si == s.len()) {
            return true;
        }
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi + 1, si));
            pi += 1;
            continue;
        }
        if pi < p.len() && si < s.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
            continue;
        }
        // Mismatch: let the last `*` swallow one more byte, if there is one.
        match star {
            Some((after_star, matched_to)) if matched_to < s.len() => {
                star = Some((after_star, matched_to + 1));
                pi = after_star;
                si = matched_to + 1;
            }
            _ => return false,
        }
    }
}

/// Percent-encodes bytes outside printable ASCII and upper-cases existing `%xx` escapes, so that
/// patterns and URL paths compare alike.
fn normalize_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit() {
            out.push('%');
            out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
            out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            i += 3;
            continue;
        }
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        i += 1;
    }
    out
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = "hearth-ingest/0.1 (+https://github.com/hearth-dev/hearth)";

    #[test]
    fn longest_match_wins_and_allow_wins_ties() {
        let robots = RobotsTxt::parse(
            "User-agent: *\nDisallow: /private\nAllow: /private/public\nDisallow: /tie\nAllow: /tie\n\
             Disallow: /*.pdf$\nDisallow: /tmp*/cache\n",
        );
        let rules = robots.rules_for(AGENT);
        assert!(rules.allows("/"));
        assert!(rules.allows("/docs/a.html"));
        assert!(!rules.allows("/private"));
        assert!(!rules.allows("/private/secret.md"));
        assert!(rules.allows("/private/public/readme.md"));
        assert!(rules.allows("/tie"));
        assert!(!rules.allows("/files/report.pdf"));
        assert!(rules.allows("/files/report.pdf?download=1"));
        assert!(!rules.allows("/tmp-1/x/cache/y"));
        assert!(rules.allows("/tmp-1/x/other"));
        assert!(rules.allows("/robots.txt"));
    }

    #[test]
    fn a_named_group_replaces_the_star_group() {
        let robots = RobotsTxt::parse(
            "# comment\nUser-agent: *\nDisallow: /\n\nUser-agent: other-bot\nUser-agent: Hearth-Ingest # us\n\
             Disallow: /drafts/\nCrawl-delay: 2.5\n\nUser-agent: hearth-ingest\nDisallow: /old/\n",
        );
        let rules = robots.rules_for(AGENT);
        assert!(rules.allows("/docs/"));
        assert!(!rules.allows("/drafts/x"));
        assert!(!rules.allows("/old/x"), "groups naming the agent are merged");
        assert_eq!(rules.crawl_delay, Some(Duration::from_millis(2500)));
        let others = robots.rules_for("someone-else");
        assert!(!others.allows("/docs/"));
        assert_eq!(others.crawl_delay, None);
    }

    #[test]
    fn empty_or_odd_files_allow_everything() {
        for text in ["", "garbage\n\n::::", "Disallow: /\n", "User-agent: *\nDisallow:\n"] {
            assert!(RobotsTxt::parse(text).rules_for(AGENT).allows("/anything"), "{text:?}");
        }
    }

    #[test]
    fn paths_compare_with_normalised_percent_encoding() {
        let robots = RobotsTxt::parse("User-agent: *\nDisallow: /café\nDisallow: /a%2fb\n");
        let rules = robots.rules_for(AGENT);
        assert!(!rules.allows("/caf%C3%A9/menu"));
        assert!(!rules.allows("/a%2Fb"));
        assert!(rules.allows("/cafe"));
    }

    #[test]
    fn wildcards_backtrack() {
        assert!(matches("/*/b*c$", "/x/b/y/bzc"));
        assert!(!matches("/*/b*c$", "/x/b/y/bzcd"));
        assert!(matches("*", ""));
        assert!(matches("/a**b", "/a/x/b"));
        assert!(!matches("/a", "/"));
    }
}
