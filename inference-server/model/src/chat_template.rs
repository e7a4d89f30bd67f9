//! Chat templates: turn a conversation into the prompt text a model was trained on.
//!
//! The template is the GGUF's own `tokenizer.chat_template` (a Hugging Face Jinja template),
//! rendered with minijinja the way `transformers` does (`trim_blocks`, `lstrip_blocks`, Python
//! string methods via minijinja-contrib's pycompat, `raise_exception`, `strftime_now`). When the
//! GGUF has none, a built-in template for the model family is used: Gemma turns, ChatML, Llama 3
//! headers or Mistral `[INST]`.

use candle_core::quantized::gguf_file::{Content, Value};
use minijinja::{Environment, ErrorKind, context};

use super::tokenizer::gguf_special_tokens;

const TEMPLATE_NAME: &str = "chat";
/// Prefix of errors raised by the template itself, so they can be told from engine errors.
const RAISED: &str = "raise_exception: ";

/// One turn of a conversation.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may accept others, such as `tool`).
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// Why a chat template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template source is not valid Jinja (as minijinja understands it).
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    /// The template rejected the conversation with `raise_exception`.
    #[error("chat template rejected the conversation: {0}")]
    Raised(String),
    /// Rendering failed for another reason (e.g. an unsupported filter or method).
    #[error("chat template failed to render: {0}")]
    Render(String),
    /// `tokenizer.chat_template` or the tokenizer metadata it relies on is malformed.
    #[error("GGUF metadata is unusable for the chat template: {0}")]
    Metadata(String),
}

/// The prompt formats with a built-in template, used when a GGUF embeds none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatFormat {
    /// Gemma: `<start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n`; no system role.
    Gemma,
    /// ChatML (Qwen, SmolLM): `<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n`.
    ChatMl,
    /// Llama 3: `<|start_header_id|>user<|end_header_id|>\n\n…<|eot_id|>`.
    Llama3,
    /// Mistral: `[INST] … [/INST]answer</s>`; no system role.
    Mistral,
}

impl ChatFormat {
    /// The format for a `general.architecture` value; unknown architectures get ChatML.
    pub fn for_architecture(architecture: &str) -> Self {
        let arch = architecture.to_ascii_lowercase();
        if arch.starts_with("gemma") {
            Self::Gemma
        } else if arch.starts_with("llama") {
            Self::Llama3
        } else if arch.starts_with("mistral") || arch.starts_with("mixtral") {
            Self::Mistral
        } else {
            // qwen2, qwen3, smollm2 and most recent open models speak ChatML.
            Self::ChatMl
        }
    }

    /// The format whose turn markers a vocabulary contains, if any.
    fn from_vocabulary(tokens: &[Value]) -> Option<Self> {
        let has = |marker: &str| tokens.iter().any(|t| matches!(t, Value::String(s) if s == marker));
        [
            ("<start_of_turn>", Self::Gemma),
            ("<|im_start|>", Self::ChatMl),
            ("<|start_header_id|>", Self::Llama3),
            ("[INST]", Self::Mistral),
        ]
        .into_iter()
        .find(|(marker, _)| has(marker))
        .map(|(_, format)| format)
    }

    fn source(self) -> &'static str {
        match self {
            Self::Gemma => GEMMA_TEMPLATE,
            Self::ChatMl => CHATML_TEMPLATE,
            Self::Llama3 => LLAMA3_TEMPLATE,
            Self::Mistral => MISTRAL_TEMPLATE,
        }
    }

    /// Whether the format has a turn for system messages (Gemma and Mistral have none: their
    /// system text goes into the first user turn).
    fn has_system_role(self) -> bool {
        matches!(self, Self::ChatMl | Self::Llama3)
    }

    fn default_special_tokens(self) -> (&'static str, &'static str) {
        match self {
            Self::Gemma => ("<bos>", "<eos>"),
            Self::ChatMl => ("", "<|im_end|>"),
            Self::Llama3 => ("<|begin_of_text|>", "<|eot_id|>"),
            Self::Mistral => ("<s>", "</s>"),
        }
    }
}

// The built-in templates emit no BOS: the tokenizer adds it when the model wants it. Gemma and
// Mistral never see a system message: `render` folds them into the first user turn.
const GEMMA_TEMPLATE: &str = r#"
{%- for message in messages -%}
  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
  {{- '<start_of_turn>' ~ role ~ '\n' ~ (message['content'] | trim) ~ '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}
"#;

const CHATML_TEMPLATE: &str = r#"
{%- for message in messages -%}
  {{- '<|im_start|>' ~ message['role'] ~ '\n' ~ message['content'] ~ '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"#;

const LLAMA3_TEMPLATE: &str = r#"
{%- for message in messages -%}
  {{- '<|start_header_id|>' ~ message['role'] ~ '<|end_header_id|>\n\n' ~ (message['content'] | trim) ~ '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}
"#;

const MISTRAL_TEMPLATE: &str = r#"
{%- for message in messages -%}
  {%- if message['role'] == 'user' -%}
    {{- '[INST] ' ~ message['content'] ~ ' [/INST]' -}}
  {%- elif message['role'] == 'assistant' -%}
    {{- message['content'] ~ eos_token -}}
  {%- endif -%}
{%- endfor -%}
"#;

/// A compiled chat template. `Send + Sync`.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Drop a leading BOS text from the output, because the tokenizer adds BOS itself.
    strip_bos: bool,
    fallback: Option<ChatFormat>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("fallback", &self.fallback)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("strip_bos", &self.strip_bos)
            .finish()
    }
}

impl ChatTemplate {
    /// The GGUF's tokenizer.chat_template, else the fallback for general.architecture.
    ///
    /// The rendered prompt is meant for `TextTokenizer::encode(prompt, true)`: when the tokenizer
    /// adds BOS itself, a BOS the template writes is removed, so prompts never start with two.
    /// Without an embedded template the format is chosen by the turn markers in the vocabulary,
    /// then by architecture.
    pub fn from_gguf(content: &Content) -> Result<Self, TemplateError> {
        let special = gguf_special_tokens(content).map_err(|e| TemplateError::Metadata(e.to_string()))?;
        let bos = special.bos.clone().unwrap_or_default();
        let eos = special.eos.clone().unwrap_or_default();
        match content.metadata.get("tokenizer.chat_template") {
            Some(Value::String(source)) => {
                let mut template = Self::from_source(source, &bos, &eos)?;
                template.strip_bos = special.add_bos;
                Ok(template)
            }
            Some(other) => Err(TemplateError::Metadata(format!(
                "`tokenizer.chat_template` should be a string, found {:?}",
                other.value_type()
            ))),
            None => {
                let vocab_format = match content.metadata.get("tokenizer.ggml.tokens") {
                    Some(Value::Array(tokens)) => ChatFormat::from_vocabulary(tokens),
                    _ => None,
                };
                let format = vocab_format.unwrap_or_else(|| {
                    let arch = match content.metadata.get("general.architecture") {
                        Some(Value::String(a)) => a.as_str(),
                        _ => "",
                    };
                    ChatFormat::for_architecture(arch)
                });
                let mut template = Self::from_format(format);
                if special.bos.is_some() {
                    template.bos_token = bos;
                }
                if special.eos.is_some() {
                    template.eos_token = eos;
                }
                template.strip_bos = special.add_bos;
                Ok(template)
            }
        }
    }

    /// Compiles a Hugging Face chat template; `bos_token` and `eos_token` are the texts the
    /// template sees under those names. The output is returned as rendered (see
    /// [`with_bos_stripped`](Self::with_bos_stripped)).
    pub fn from_source(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| TemplateError::Syntax(e.to_string()))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{message}")))
        });
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(|e| TemplateError::Syntax(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            strip_bos: false,
            fallback: None,
        })
    }

    /// The built-in template for an architecture (`gemma3`, `qwen2`, `qwen3`, `smollm2`, `llama`,
    /// `mistral`, …); unknown architectures get ChatML.
    pub fn fallback(architecture: &str) -> Self {
        Self::from_format(ChatFormat::for_architecture(architecture))
    }

    /// The built-in template for a format.
    pub fn from_format(format: ChatFormat) -> Self {
        let (bos, eos) = format.default_special_tokens();
        match Self::from_source(format.source(), bos, eos) {
            Ok(mut template) => {
                template.fallback = Some(format);
                template
            }
            // The built-in sources are fixed and covered by tests; this arm is unreachable.
            Err(e) => unreachable!("built-in {format:?} chat template does not compile: {e}"),
        }
    }

    /// Whether a leading BOS text is removed from rendered prompts (set by
    /// [`from_gguf`](Self::from_gguf) when the tokenizer adds BOS itself).
    pub fn with_bos_stripped(mut self, strip: bool) -> Self {
        self.strip_bos = strip;
        self
    }

    /// The built-in format in use, or `None` for a template from the model file.
    pub fn fallback_format(&self) -> Option<ChatFormat> {
        self.fallback
    }

    /// Renders messages (roles system/user/assistant; for the built-in formats that have no system
    /// role, Gemma and Mistral, every system message is folded into the first user turn, wherever
    /// it stands) with add_generation_prompt.
    ///
    /// A template that rejects system messages (`raise_exception`) is retried once with the system
    /// text folded into the first user turn; if it still fails, its first error is returned.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TemplateError> {
        if self.fallback.is_some_and(|f| !f.has_system_role()) && messages.iter().any(|m| m.role == "system") {
            return self.render_raw(&fold_system(messages), add_generation_prompt);
        }
        match self.render_raw(messages, add_generation_prompt) {
            Ok(prompt) => Ok(prompt),
            Err(first) => {
                if matches!(first, TemplateError::Raised(_))
                    && messages.iter().any(|m| m.role == "system")
                    && let Ok(prompt) = self.render_raw(&fold_system(messages), add_generation_prompt)
                {
                    return Ok(prompt);
                }
                Err(first)
            }
        }
    }

    fn render_raw(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TemplateError> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| TemplateError::Render(e.to_string()))?;
        let rendered = template
            .render(context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(classify_render_error)?;
        if self.strip_bos
            && !self.bos_token.is_empty()
            && let Some(rest) = rendered.strip_prefix(self.bos_token.as_str())
        {
            return Ok(rest.to_string());
        }
        Ok(rendered)
    }
}

fn classify_render_error(e: minijinja::Error) -> TemplateError {
    match e.detail() {
        Some(detail) if detail.starts_with(RAISED) => {
            let message = detail.trim_start_matches(RAISED).to_string();
            match e.line() {
                Some(line) => TemplateError::Raised(format!("{message} (template line {line})")),
                None => TemplateError::Raised(message),
            }
        }
        _ => TemplateError::Render(e.to_string()),
    }
}

/// Merges system messages into the first user message (or turns them into one).
fn fold_system(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let system: Vec<&str> = messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
    let mut rest: Vec<ChatMessage> = messages.iter().filter(|m| m.role != "system").cloned().collect();
    let prefix = system.join("\n\n");
    match rest.iter_mut().find(|m| m.role == "user") {
        Some(first_user) => first_user.content = format!("{prefix}\n\n{}", first_user.content),
        None => rest.insert(0, ChatMessage::new("user", prefix)),
    }
    rest
}

/// The `strftime_now(format)` helper some templates (Llama 3.1+) call: the current UTC time,
/// supporting `%Y %m %d %e %H %M %S %y %b %B %a %A %j %%`.
fn strftime_now(format: &str) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format_utc(secs, format)
}

fn format_utc(unix_seconds: u64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = unix_seconds / 86_400;
    let secs = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let is_leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let month_index = (month - 1) as usize;
    let day_of_year = cumulative[month_index] + day as i64 + i64::from(month > 2 && is_leap(year));
    let month_name = MONTHS[month_index];
    let weekday = DAYS[(days % 7) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whether a GGUF holds a base (pretrained only) model: no chat template and no instruct or
/// chat finetune named in `general.finetune`. Such a model continues text; it was never taught
/// to follow a turn format, so chat through a fallback template gives text, not answers.
pub fn is_base_model(content: &Content) -> bool {
    if content.metadata.contains_key("tokenizer.chat_template") {
        return false;
    }
    let finetune = match content.metadata.get("general.finetune") {
        Some(Value::String(name)) => name.to_ascii_lowercase(),
        _ => return true,
    };
    let tuned = ["instruct", "chat", "sft", "dpo", "rlhf"].iter().any(|word| finetune.contains(word))
        || finetune == "it"
        || finetune.ends_with("-it");
    !tuned
}

#[cfg(test)]
mod tests {
    use super::super::tokenizer::TextTokenizer;
    use super::*;

    fn required(file: &str) -> Content {
        hearth_testkit::models::gguf(&hearth_testkit::models::required(file))
    }

    fn optional(file: &str) -> Option<Content> {
        hearth_testkit::models::optional(file).map(|path| hearth_testkit::models::gguf(&path))
    }

    #[test]
    fn base_models_are_told_apart_from_instruct_models() {
        assert!(is_base_model(&required("gemma3-270m-q4_k_m.gguf")), "gemma3-270m from PyPI is the base model");
        assert!(!is_base_model(&required("smollm2-135m-instruct-q4_1.gguf")));
        if let Some(qwen) = optional("qwen2.5-coder-0.5b-instruct.gguf") {
            assert!(!is_base_model(&qwen));
        }
    }

    fn conversation() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "You are terse."),
            ChatMessage::new("user", "What is 2+2?"),
            ChatMessage::new("assistant", "4"),
            ChatMessage::new("user", "And 3+3?"),
        ]
    }

    fn count(ids: &[u32], id: u32) -> usize {
        ids.iter().filter(|&&x| x == id).count()
    }

    #[test]
    fn gemma_gguf_without_template_uses_gemma_turns() {
        let content = required("gemma3-270m-q4_k_m.gguf");
        let template = ChatTemplate::from_gguf(&content).expect("template");
        assert_eq!(template.fallback_format(), Some(ChatFormat::Gemma), "this GGUF embeds no chat template");
        let prompt = template.render(&conversation(), true).expect("render");
        assert_eq!(
            prompt,
            "<start_of_turn>user\nYou are terse.\n\nWhat is 2+2?<end_of_turn>\n\
             <start_of_turn>model\n4<end_of_turn>\n\
             <start_of_turn>user\nAnd 3+3?<end_of_turn>\n\
             <start_of_turn>model\n"
        );
        let tok = TextTokenizer::from_gguf(&content).expect("tokenizer");
        let ids = tok.encode(&prompt, true).expect("encode");
        let start = tok.token_id("<start_of_turn>").expect("marker");
        let end = tok.token_id("<end_of_turn>").expect("marker");
        assert_eq!(&ids[..2], &[tok.bos_id().expect("bos"), start], "one BOS, then the first turn");
        assert_eq!(count(&ids, start), 4);
        assert_eq!(count(&ids, end), 3);
        assert_eq!(tok.decode(&ids, false).expect("decode"), format!("<bos>{prompt}"));
    }

    #[test]
    fn smollm_embedded_chatml_template() {
        let content = required("smollm2-135m-instruct-q4_1.gguf");
        let template = ChatTemplate::from_gguf(&content).expect("template");
        assert_eq!(template.fallback_format(), None);
        let prompt = template.render(&conversation(), true).expect("render");
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are terse.<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
             <|im_start|>assistant\n4<|im_end|>\n\
             <|im_start|>user\nAnd 3+3?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        // Without a system message, SmolLM's template supplies its own.
        let prompt = template.render(&conversation()[1..2], true).expect("render");
        assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), "{prompt}");

        let tok = TextTokenizer::from_gguf(&content).expect("tokenizer");
        let ids = tok.encode(&template.render(&conversation(), true).expect("render"), true).expect("encode");
        let start = tok.token_id("<|im_start|>").expect("marker");
        let end = tok.token_id("<|im_end|>").expect("marker");
        assert_eq!(ids[0], start, "no BOS for SmolLM2");
        assert_eq!(count(&ids, start), 5);
        assert_eq!(count(&ids, end), 4);
    }

    #[test]
    fn qwen_embedded_chatml_template() {
        for file in ["qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "qwen2.5-coder-0.5b-instruct.gguf"] {
            let Some(content) = optional(file) else { continue };
            let template = ChatTemplate::from_gguf(&content).expect("template");
            let prompt = template.render(&conversation(), true).expect("render");
            assert_eq!(
                prompt,
                "<|im_start|>system\nYou are terse.<|im_end|>\n\
                 <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
                 <|im_start|>assistant\n4<|im_end|>\n\
                 <|im_start|>user\nAnd 3+3?<|im_end|>\n\
                 <|im_start|>assistant\n",
                "{file}"
            );
            let default_system = template.render(&conversation()[1..2], false).expect("render");
            assert!(default_system.starts_with("<|im_start|>system\nYou are Qwen"), "{default_system}");
            let tok = TextTokenizer::from_gguf(&content).expect("tokenizer");
            let ids = tok.encode(&prompt, true).expect("encode");
            assert_eq!(count(&ids, 151_644), 5, "{file}: <|im_start|>");
            assert_eq!(count(&ids, 151_645), 4, "{file}: <|im_end|>");
        }
    }

    #[test]
    fn fallbacks_per_architecture() {
        let messages = conversation();
        assert_eq!(ChatTemplate::fallback("gemma3").fallback_format(), Some(ChatFormat::Gemma));
        for arch in ["qwen2", "qwen3", "smollm2", "something-new"] {
            let prompt = ChatTemplate::fallback(arch).render(&messages, true).expect("render");
            assert!(prompt.starts_with("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n"), "{arch}");
            assert!(prompt.ends_with("<|im_end|>\n<|im_start|>assistant\n"), "{arch}");
        }
        let llama = ChatTemplate::fallback("llama").render(&messages, true).expect("render");
        assert_eq!(
            llama,
            "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let mistral = ChatTemplate::fallback("mistral").render(&messages, true).expect("render");
        assert_eq!(mistral, "[INST] You are terse.\n\nWhat is 2+2? [/INST]4</s>[INST] And 3+3? [/INST]");
        let gemma = ChatTemplate::fallback("gemma3").render(&messages[1..2], false).expect("render");
        assert_eq!(gemma, "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n");
    }

    #[test]
    fn raising_template_is_an_error_not_a_panic() {
        let template = ChatTemplate::from_source(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with a user turn') }}{% endif %}ok",
            "<s>",
            "</s>",
        )
        .expect("compiles");
        let err = template.render(&[ChatMessage::new("assistant", "hi")], true).expect_err("raises");
        assert!(matches!(err, TemplateError::Raised(_)), "{err:?}");
        assert!(err.to_string().contains("Conversation must start with a user turn"), "{err}");
        assert_eq!(template.render(&[ChatMessage::new("user", "hi")], true).expect("renders"), "ok");

        let syntax = ChatTemplate::from_source("{% for m in messages %}", "", "").expect_err("unclosed loop");
        assert!(matches!(syntax, TemplateError::Syntax(_)), "{syntax:?}");
    }

    #[test]
    fn system_is_folded_when_template_rejects_it() {
        // Like Gemma 2 / Mistral templates on the Hub: no system role.
        let template = ChatTemplate::from_source(
            "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}\
             [{{ m['role'] }}]{{ m['content'] }}{% endfor %}",
            "<s>",
            "</s>",
        )
        .expect("compiles");
        let prompt = template.render(&conversation()[..2], true).expect("folded");
        assert_eq!(prompt, "<s>[user]You are terse.\n\nWhat is 2+2?");
        assert_eq!(
            template.with_bos_stripped(true).render(&conversation()[1..2], true).expect("render"),
            "[user]What is 2+2?"
        );
    }

    #[test]
    fn python_string_methods_work() {
        let template = ChatTemplate::from_source(
            "{% for m in messages %}{% if m.content.startswith('  ') %}{{ m.content.strip().upper() }}{% endif %}\
             {{ '|' ~ m['content'].split(',')|length|string }}{% endfor %}{{ strftime_now('%Y')|length }}",
            "",
            "",
        )
        .expect("compiles");
        let out = template.render(&[ChatMessage::new("user", "  a,b  ")], false).expect("render");
        assert_eq!(out, "A,B|24");
    }

    #[test]
    fn utc_dates_format() {
        assert_eq!(format_utc(0, "%d %b %Y %H:%M:%S %A %j"), "01 Jan 1970 00:00:00 Thursday 001");
        assert_eq!(format_utc(1_721_952_000, "%d %B %Y"), "26 July 2024");
        assert_eq!(format_utc(951_782_400, "%Y-%m-%d %j"), "2000-02-29 060");
    }

    #[test]
    fn template_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }
}
