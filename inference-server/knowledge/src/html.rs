//! HTML to plain text for ingestion: the words a reader sees, with headings kept as markdown
//! `#` lines so the splitter can label chunks with them.
//!
//! Not a conforming HTML parser: a single forgiving pass over tags and text that drops scripts,
//! styles, navigation and other non-content elements, turns block elements into line breaks,
//! list items into `- ` lines, `<pre>` into fenced code, and decodes character references.

/// Elements whose whole content is dropped.
const DROPPED: &[&str] =
    &["script", "style", "nav", "noscript", "template", "svg", "head", "iframe", "canvas", "object", "textarea"];

/// Elements whose content is raw text: no tags inside until the matching end tag.
const RAW_TEXT: &[&str] = &["script", "style", "textarea", "title", "xmp", "plaintext"];

/// Elements that start and end a paragraph (a blank line around them).
const PARAGRAPHS: &[&str] = &[
    "p",
    "blockquote",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "aside",
    "ul",
    "ol",
    "dl",
    "table",
    "figure",
    "hr",
    "details",
    "address",
    "fieldset",
    "form",
];

/// Elements that sit on lines of their own.
const LINES: &[&str] =
    &["div", "br", "tr", "dt", "dd", "figcaption", "summary", "caption", "thead", "tbody", "tfoot", "legend", "option"];

/// The readable text of an HTML document.
pub fn html_to_text(html: &str) -> String {
    let mut out = Output::default();
    // Open dropped elements, innermost last; content is dropped while any is open.
    let mut dropping: Vec<String> = Vec::new();
    let mut pre_depth = 0usize;
    let mut rest = html;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            out.text(rest, dropping.is_empty(), pre_depth > 0);
            break;
        };
        out.text(&rest[..lt], dropping.is_empty(), pre_depth > 0);
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |end| &after[end + 3..]);
            continue;
        }
        if let Some(after) = rest.strip_prefix("<![CDATA[") {
            let end = after.find("]]>").unwrap_or(after.len());
            if dropping.is_empty() {
                out.literal(&after[..end], pre_depth > 0);
            }
            rest = after.get(end + 3..).unwrap_or("");
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            rest = rest.find('>').map_or("", |end| &rest[end + 1..]);
            continue;
        }
        let Some(tag) = Tag::parse(rest) else {
            // A "<" that starts no tag is text.
            out.text("<", dropping.is_empty(), pre_depth > 0);
            rest = &rest[1..];
            continue;
        };
        rest = &rest[tag.len..];
        let name = tag.name.as_str();
        if !tag.closing && RAW_TEXT.contains(&name) && !tag.self_closing {
            let end = find_end_tag(rest, name);
            if dropping.is_empty() && !DROPPED.contains(&name) && name != "title" {
                out.text(&rest[..end], true, pre_depth > 0);
            }
            rest = &rest[end..];
            rest = rest.find('>').map_or("", |close| &rest[close + 1..]);
            continue;
        }
        if DROPPED.contains(&name) {
            if tag.closing {
                if let Some(open) = dropping.iter().rposition(|open| open == name) {
                    dropping.truncate(open);
                }
            } else if !tag.self_closing {
                dropping.push(tag.name.clone());
            }
            continue;
        }
        if name == "body" && !tag.closing {
            // `</head>` may be left out; the body starts the content regardless.
            dropping.retain(|open| open != "head");
        }
        if !dropping.is_empty() {
            continue;
        }
        out.tag(&tag, &mut pre_depth);
    }
    out.finish()
}

/// A parsed start or end tag.
struct Tag {
    /// Lowercased element name.
    name: String,
    closing: bool,
    self_closing: bool,
    /// Bytes the tag occupies, `<` to `>` inclusive.
    len: usize,
}

impl Tag {
    /// Parses the tag at the start of `text` (which starts with `<`), if it is one.
    fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let mut i = 1;
        let closing = bytes.get(i) == Some(&b'/');
        if closing {
            i += 1;
        }
        let name_start = i;
        while bytes.get(i).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b':') {
            i += 1;
        }
        if i == name_start || !bytes[name_start].is_ascii_alphabetic() {
            return None;
        }
        let name = text[name_start..i].to_ascii_lowercase();
        // Find the closing '>' outside quoted attribute values.
        let mut quote = None;
        while let Some(&b) = bytes.get(i) {
            match (quote, b) {
                (Some(q), _) if b == q => quote = None,
                (Some(_), _) => {}
                (None, b'"' | b'\'') => quote = Some(b),
                (None, b'>') => {
                    let self_closing = i > 0 && bytes[i - 1] == b'/';
                    return Some(Self { name, closing, self_closing, len: i + 1 });
                }
                (None, _) => {}
            }
            i += 1;
        }
        // Unterminated tag: it runs to the end of the document.
        Some(Self { name, closing, self_closing: false, len: text.len() })
    }
}

/// Offset in `text` of the end tag `</name` (case-insensitive), or the end of `text`.
fn find_end_tag(text: &str, name: &str) -> usize {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = text[from..].find("</") {
        let at = from + found;
        let candidate = &bytes[at + 2..];
        if candidate.len() >= name.len()
            && candidate[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && candidate.get(name.len()).is_none_or(|b| !b.is_ascii_alphanumeric())
        {
            return at;
        }
        from = at + 2;
    }
    text.len()
}

/// The text being built, with pending breaks and spaces resolved lazily so that empty elements
/// leave no blank lines behind.
#[derive(Default)]
struct Output {
    text: String,
    /// Newlines owed before the next text: 1 for a line break, 2 for a paragraph break.
    pending_newlines: usize,
    pending_space: bool,
    /// Prefix owed at the start of the next line of text (`- ` for a list item, `## `).
    pending_prefix: String,
    /// Inside a heading: its text stays on one line.
    in_heading: bool,
    /// A table row already has a cell, so the next one gets a separator.
    cell_open: bool,
    /// Length of the text when the current `<pre>` block opened.
    pre_start: usize,
}

impl Output {
    fn request_newlines(&mut self, newlines: usize) {
        self.pending_newlines = self.pending_newlines.max(newlines);
        self.pending_space = false;
    }

    /// Writes what is owed before text: breaks, prefix, a space.
    fn flush_pending(&mut self) {
        if self.text.is_empty() {
            self.pending_newlines = 0;
            self.pending_space = false;
        }
        if self.pending_newlines > 0 {
            let trimmed = self.text.trim_end_matches([' ', '\t']).len();
            self.text.truncate(trimmed);
            for _ in 0..self.pending_newlines {
                self.text.push('\n');
            }
            self.pending_newlines = 0;
            self.pending_space = false;
        }
        if !self.pending_prefix.is_empty() {
            self.text.push_str(&self.pending_prefix);
            self.pending_prefix.clear();
            self.pending_space = false;
        }
        if self.pending_space && !self.text.ends_with(char::is_whitespace) {
            self.text.push(' ');
            self.pending_space = false;
        }
    }

    /// Appends text from the document, decoding references; whitespace collapses unless in `<pre>`.
    fn text(&mut self, raw: &str, visible: bool, pre: bool) {
        if !visible || raw.is_empty() {
            return;
        }
        let decoded = decode_entities(raw);
        if pre {
            self.literal(&decoded, true);
            return;
        }
        for (k, word) in decoded.split(|c: char| c.is_whitespace()).enumerate() {
            if k > 0 && !(self.text.is_empty() && self.pending_prefix.is_empty()) {
                self.pending_space = true;
            }
            if !word.is_empty() {
                self.flush_pending();
                self.text.push_str(word);
            }
        }
    }

    /// Appends text as is (inside `<pre>`, or CDATA).
    fn literal(&mut self, text: &str, pre: bool) {
        if text.is_empty() {
            return;
        }
        if !pre {
            self.text(text, true, false);
            return;
        }
        self.flush_pending();
        // A newline right after `<pre>` belongs to the markup, not the content.
        let text = if self.text.len() == self.pre_start { text.strip_prefix('\n').unwrap_or(text) } else { text };
        self.text.push_str(text);
    }

    fn tag(&mut self, tag: &Tag, pre_depth: &mut usize) {
        let name = tag.name.as_str();
        if let Some(level) = heading_level(name) {
            self.request_newlines(2);
            if tag.closing {
                self.in_heading = false;
                self.pending_prefix.clear();
            } else {
                self.in_heading = true;
                self.pending_prefix = format!("{} ", "#".repeat(level));
            }
            return;
        }
        if self.in_heading {
            // Keep the heading on its line; only a space for breaks inside it.
            if name == "br" {
                self.pending_space = true;
            }
            return;
        }
        match name {
            "pre" if tag.closing => {
                if *pre_depth == 1 {
                    if !self.text.ends_with('\n') {
                        self.text.push('\n');
                    }
                    self.text.push_str("```");
                }
                *pre_depth = pre_depth.saturating_sub(1);
                self.request_newlines(2);
            }
            "pre" => {
                if *pre_depth == 0 {
                    self.request_newlines(2);
                    self.flush_pending();
                    self.text.push_str("```\n");
                    self.pre_start = self.text.len();
                }
                *pre_depth += 1;
            }
            "li" if !tag.closing => {
                self.request_newlines(1);
                self.pending_prefix = "- ".to_owned();
            }
            "li" => self.request_newlines(1),
            "tr" => {
                self.cell_open = false;
                self.request_newlines(1);
            }
            "td" | "th" if !tag.closing => {
                if self.cell_open {
                    self.pending_space = false;
                    self.flush_pending();
                    self.text.push_str(" | ");
                }
                self.cell_open = true;
            }
            _ if PARAGRAPHS.contains(&name) => self.request_newlines(2),
            _ if LINES.contains(&name) => self.request_newlines(1),
            _ => {}
        }
    }

    fn finish(mut self) -> String {
        let trimmed = self.text.trim_end().len();
        self.text.truncate(trimmed);
        // Whitespace-only lines would look like paragraph breaks to nobody's benefit.
        let mut text = String::with_capacity(self.text.len());
        let mut blank_run = 0;
        for line in self.text.split('\n') {
            let line = line.trim_end();
            if line.is_empty() {
                blank_run += 1;
                if blank_run > 1 {
                    continue;
                }
            } else {
                blank_run = 0;
            }
            text.push_str(line);
            text.push('\n');
        }
        let trimmed = text.trim_end().len();
        text.truncate(trimmed);
        text
    }
}

fn heading_level(name: &str) -> Option<usize> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

/// Named character references decoded (the common ones; others are kept as written).
const ENTITIES: &[(&str, &str)] = &[
    ("amp", "&"),
    ("lt", "<"),
    ("gt", ">"),
    ("quot", "\""),
    ("apos", "'"),
    ("nbsp", " "),
    ("ensp", " "),
    ("emsp", " "),
    ("thinsp", " "),
    ("shy", ""),
    ("zwj", "\u{200d}"),
    ("zwnj", "\u{200c}"),
    ("copy", "©"),
    ("reg", "®"),
    ("trade", "™"),
    ("hellip", "…"),
    ("mdash", "—"),
    ("ndash", "–"),
    ("minus", "−"),
    ("lsquo", "‘"),
    ("rsquo", "’"),
    ("sbquo", "‚"),
    ("ldquo", "“"),
    ("rdquo", "”"),
    ("bdquo", "„"),
    ("laquo", "«"),
    ("raquo", "»"),
    ("lsaquo", "‹"),
    ("rsaquo", "›"),
    ("bull", "•"),
    ("middot", "·"),
    ("deg", "°"),
    ("times", "×"),
    ("divide", "÷"),
    ("plusmn", "±"),
    ("para", "¶"),
    ("sect", "§"),
    ("euro", "€"),
    ("pound", "£"),
    ("yen", "¥"),
    ("cent", "¢"),
    ("curren", "¤"),
    ("larr", "←"),
    ("rarr", "→"),
    ("uarr", "↑"),
    ("darr", "↓"),
    ("harr", "↔"),
    ("rArr", "⇒"),
    ("le", "≤"),
    ("ge", "≥"),
    ("ne", "≠"),
    ("asymp", "≈"),
    ("infin", "∞"),
    ("frac12", "½"),
    ("frac14", "¼"),
    ("frac34", "¾"),
    ("sup1", "¹"),
    ("sup2", "²"),
    ("sup3", "³"),
    ("micro", "µ"),
    ("iexcl", "¡"),
    ("iquest", "¿"),
    ("szlig", "ß"),
    ("dagger", "†"),
    ("check", "✓"),
];

/// Letters with diacritics, named as `<letter><accent>` (`eacute`, `Ouml`, ...).
const ACCENTED: &[(&str, &str, &str)] = &[
    ("acute", "aeiouyAEIOUY", "áéíóúýÁÉÍÓÚÝ"),
    ("grave", "aeiouAEIOU", "àèìòùÀÈÌÒÙ"),
    ("circ", "aeiouAEIOU", "âêîôûÂÊÎÔÛ"),
    ("uml", "aeiouyAEIOUY", "äëïöüÿÄËÏÖÜŸ"),
    ("tilde", "anoANO", "ãñõÃÑÕ"),
    ("ring", "aA", "åÅ"),
    ("cedil", "cC", "çÇ"),
    ("slash", "oO", "øØ"),
];

/// References that browsers decode even without the closing `;`.
const LEGACY_WITHOUT_SEMICOLON: &[&str] = &["amp", "lt", "gt", "quot", "nbsp", "copy", "reg"];

fn named_entity(name: &str) -> Option<String> {
    if let Some(&(_, value)) = ENTITIES.iter().find(|(n, _)| *n == name) {
        return Some(value.to_owned());
    }
    match name {
        "aelig" => return Some("æ".to_owned()),
        "AElig" => return Some("Æ".to_owned()),
        "oelig" => return Some("œ".to_owned()),
        "OElig" => return Some("Œ".to_owned()),
        _ => {}
    }
    let mut chars = name.chars();
    let letter = chars.next()?;
    let accent = chars.as_str();
    let (_, letters, accented) = ACCENTED.iter().find(|(a, _, _)| *a == accent)?;
    let position = letters.chars().position(|l| l == letter)?;
    accented.chars().nth(position).map(String::from)
}

/// `text` with character references (`&amp;`, `&#233;`, `&#xE9;`) decoded.
pub fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let (decoded, used) = decode_reference(rest);
        match decoded {
            Some(value) => {
                out.push_str(&value);
                rest = &rest[used..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes the reference at the start of `text` (which starts with `&`): the value and the
/// bytes used.
fn decode_reference(text: &str) -> (Option<String>, usize) {
    let body = &text[1..];
    if let Some(number) = body.strip_prefix('#') {
        let (digits, radix, skip) = match number.strip_prefix(['x', 'X']) {
            Some(hex) => (hex.bytes().take_while(u8::is_ascii_hexdigit).count(), 16, 3),
            None => (number.bytes().take_while(u8::is_ascii_digit).count(), 10, 2),
        };
        if digits == 0 {
            return (None, 0);
        }
        let start = skip;
        let digits_text = &text[start..start + digits];
        let value = u32::from_str_radix(digits_text, radix).ok();
        let c = value.filter(|&v| v != 0).and_then(char::from_u32).unwrap_or('\u{fffd}');
        let mut used = start + digits;
        if text[used..].starts_with(';') {
            used += 1;
        }
        return (Some(c.to_string()), used);
    }
    let name_len = body.bytes().take_while(u8::is_ascii_alphanumeric).count();
    let name = &body[..name_len];
    if body[name_len..].starts_with(';') {
        return (named_entity(name), 1 + name_len + 1);
    }
    match LEGACY_WITHOUT_SEMICOLON.iter().find(|legacy| name.starts_with(**legacy)) {
        Some(legacy) => (named_entity(legacy), 1 + legacy.len()),
        None => (None, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_headings_as_markdown_and_drops_non_content() {
        let html = r#"<!DOCTYPE html>
<html><head><title>Ignored</title><style>body { color: red }</style>
<script>if (a < b && "</div>") { alert("x") }</script></head>
<body>
<nav><ul><li><a href="/">Home</a></li><li>Docs</li></ul></nav>
<h1>Install   <small>v1</small></h1>
<p>Run the   installer
with <b>helm</b>.</p>
<h2 id="helm">Helm</h2>
<ul><li>One</li><li>Two &amp; three</li></ul>
<!-- a comment <p>hidden</p> -->
<pre>helm install \
  hearth ./chart
# a shell comment</pre>
<table><tr><th>Key</th><th>Value</th></tr><tr><td>a</td><td>1</td></tr></table>
<noscript>Enable JavaScript</noscript>
<footer>© 2024</footer>
</body></html>"#;
        let text = html_to_text(html);
        assert_eq!(
            text,
            "# Install v1\n\nRun the installer with helm.\n\n## Helm\n\n- One\n- Two & three\n\n\
             ```\nhelm install \\\n  hearth ./chart\n# a shell comment\n```\n\n\
             Key | Value\na | 1\n\n© 2024"
        );
    }

    #[test]
    fn decodes_character_references() {
        assert_eq!(
            decode_entities("a &lt;b&gt; &amp; &quot;c&quot; &#233;&#xE9;&#X1F600; &eacute;&Ouml;"),
            "a <b> & \"c\" éé😀 éÖ"
        );
        assert_eq!(
            decode_entities("AT&T &unknown; &amp &copy 5 &#0; &#xD800;"),
            "AT&T &unknown; & © 5 \u{fffd} \u{fffd}"
        );
        assert_eq!(decode_entities("&"), "&");
        assert_eq!(decode_entities("&#;"), "&#;");
    }

    #[test]
    fn survives_broken_markup() {
        for html in
            ["<", "<p", "<p class=\"x>text", "a < b > c", "</>", "<!-- open", "<script>never closed", "<![CDATA[x"]
        {
            let _ = html_to_text(html);
        }
        assert_eq!(html_to_text("a < b and c > d"), "a < b and c > d");
        assert_eq!(html_to_text("<p>unclosed<p>second"), "unclosed\n\nsecond");
        assert_eq!(html_to_text("<head><title>t</title><body>text"), "text");
        assert_eq!(html_to_text("<div><div></div></div><p></p>x"), "x");
    }

    #[test]
    fn breaks_lines_at_blocks_and_keeps_inline_text_together() {
        assert_eq!(
            html_to_text("<div>one</div><div>two <em>three</em></div>four<br>five"),
            "one\ntwo three\nfour\nfive"
        );
        assert_eq!(html_to_text("<p>é<b>t</b>é</p>"), "été");
    }
}
