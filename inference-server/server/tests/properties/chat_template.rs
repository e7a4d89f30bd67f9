//! Chat templates: any conversation renders, without panicking, to exactly the prompt the
//! format defines; the content is placed as text (template syntax and turn markers in it are
//! never evaluated), and no message's content is lost.
//!
//! What a template cannot promise is that a turn marker written *in* content stays text once the
//! prompt is tokenized with special tokens parsed; the tokenizer properties cover
//! `encode_literal`, which is how content keeps its markers as text.

use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Content;
use hearth_model::chat_template::{ChatFormat, ChatMessage, ChatTemplate};
use proptest::prelude::*;

use super::text::tricky_text;

fn gguf(file: &str) -> Content {
    let path = crate::model_path(file);
    let mut f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    Content::read(&mut f).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// How a template lays out a conversation, written out in Rust.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// ChatML; SmolLM2's own template adds a default system turn when there is none.
    ChatMl {
        default_system: Option<&'static str>,
    },
    Gemma,
    Llama3,
    Mistral,
}

const SMOLLM_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// The templates under test: the two test models' own (SmolLM2 embeds ChatML; Gemma 3's GGUF
/// has none and gets the built-in Gemma one) and every built-in format.
fn templates() -> &'static [(&'static str, ChatTemplate, Layout)] {
    static TEMPLATES: OnceLock<Vec<(&'static str, ChatTemplate, Layout)>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let smollm = ChatTemplate::from_gguf(&gguf("smollm2-135m-instruct-q4_1.gguf")).expect("smollm2 template");
        let gemma = ChatTemplate::from_gguf(&gguf("gemma3-270m-q4_k_m.gguf")).expect("gemma3 template");
        vec![
            ("smollm2 (embedded)", smollm, Layout::ChatMl { default_system: Some(SMOLLM_SYSTEM) }),
            ("gemma3 (built-in)", gemma, Layout::Gemma),
            ("chatml", ChatTemplate::from_format(ChatFormat::ChatMl), Layout::ChatMl { default_system: None }),
            ("gemma", ChatTemplate::from_format(ChatFormat::Gemma), Layout::Gemma),
            ("llama3", ChatTemplate::from_format(ChatFormat::Llama3), Layout::Llama3),
            ("mistral", ChatTemplate::from_format(ChatFormat::Mistral), Layout::Mistral),
        ]
    })
}

/// System messages merged into the first user turn, as `ChatTemplate::render` does for the
/// formats without a system role.
fn fold_system(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    if !messages.iter().any(|m| m.role == "system") {
        return messages.to_vec();
    }
    let prefix =
        messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n\n");
    let mut rest: Vec<ChatMessage> = messages.iter().filter(|m| m.role != "system").cloned().collect();
    match rest.iter_mut().find(|m| m.role == "user") {
        Some(first) => first.content = format!("{prefix}\n\n{}", first.content),
        None => rest.insert(0, ChatMessage::new("user", prefix)),
    }
    rest
}

/// The prompt `layout` defines for a conversation.
fn expected(layout: Layout, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    match layout {
        Layout::ChatMl { default_system } => {
            if let (Some(system), Some(first)) = (default_system, messages.first())
                && first.role != "system"
            {
                out.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
            }
            for m in messages {
                out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
            }
            if add_generation_prompt {
                out.push_str("<|im_start|>assistant\n");
            }
        }
        Layout::Gemma => {
            for m in fold_system(messages) {
                let role = if m.role == "assistant" { "model" } else { m.role.as_str() };
                out.push_str(&format!("<start_of_turn>{role}\n{}<end_of_turn>\n", m.content.trim()));
            }
            if add_generation_prompt {
                out.push_str("<start_of_turn>model\n");
            }
        }
        Layout::Llama3 => {
            for m in messages {
                out.push_str(&format!(
                    "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                    m.role,
                    m.content.trim()
                ));
            }
            if add_generation_prompt {
                out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
            }
        }
        Layout::Mistral => {
            for m in fold_system(messages) {
                match m.role.as_str() {
                    "user" => out.push_str(&format!("[INST] {} [/INST]", m.content)),
                    _ => out.push_str(&format!("{}</s>", m.content)),
                }
            }
        }
    }
    out
}

fn role() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("user".to_owned()),
        1 => Just("assistant".to_owned()),
        1 => Just("system".to_owned()),
    ]
}

/// Conversations with the roles the API passes on (system, user, assistant) and content full of
/// template syntax, turn markers, odd whitespace and unicode.
fn conversation() -> impl Strategy<Value = Vec<ChatMessage>> {
    prop::collection::vec((role(), tricky_text(8)).prop_map(|(r, c)| ChatMessage::new(r, c)), 0..6)
}

proptest! {
    #![proptest_config(crate::config(crate::CASES))]

    /// Every template renders every conversation to exactly its format's prompt: content goes
    /// in as text, whatever Jinja syntax or special tokens it holds.
    #[test]
    fn any_conversation_renders_to_the_formats_prompt(messages in conversation(), add_generation_prompt in any::<bool>()) {
        for (label, template, layout) in templates() {
            let prompt = template
                .render(&messages, add_generation_prompt)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            prop_assert_eq!(&prompt, &expected(*layout, &messages, add_generation_prompt), "{}", label);
        }
    }

    /// No message's content is lost, and the turns keep their order: each content (trimmed, as
    /// some formats trim) is in the prompt, the non-system ones one after another.
    #[test]
    fn no_content_is_lost(messages in conversation()) {
        for (label, template, _) in templates() {
            let prompt = template.render(&messages, true).unwrap_or_else(|e| panic!("{label}: {e}"));
            for m in &messages {
                prop_assert!(prompt.contains(m.content.trim()), "{}: {:?} is missing from {:?}", label, m.content, prompt);
            }
            let mut cursor = 0;
            for m in messages.iter().filter(|m| m.role != "system") {
                let content = m.content.trim();
                let found = prompt[cursor..].find(content);
                prop_assert!(found.is_some(), "{}: {:?} is out of order in {:?}", label, m.content, prompt);
                cursor += found.unwrap_or_default() + content.len();
            }
        }
    }

    /// A template from a model file is untrusted input too: any source compiles or is refused,
    /// and renders or fails, without a panic.
    #[test]
    fn any_template_source_compiles_or_is_refused(source in tricky_text(16), messages in conversation()) {
        if let Ok(template) = ChatTemplate::from_source(&source, "<s>", "</s>") {
            let _ = template.render(&messages, true);
        }
    }
}

/// Regression: Gemma and Mistral have no system role; a system message that was not first, or
/// that no user turn followed, used to be dropped from the prompt.
#[test]
fn system_messages_are_never_dropped_by_formats_without_a_system_role() {
    let gemma = ChatTemplate::from_format(ChatFormat::Gemma);
    let mistral = ChatTemplate::from_format(ChatFormat::Mistral);
    let only_system = [ChatMessage::new("system", "Be terse.")];
    assert_eq!(
        gemma.render(&only_system, true).unwrap(),
        "<start_of_turn>user\nBe terse.<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(mistral.render(&only_system, true).unwrap(), "[INST] Be terse. [/INST]");
    let late_system = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello"),
        ChatMessage::new("system", "Answer in French."),
        ChatMessage::new("user", "Why?"),
    ];
    assert_eq!(
        mistral.render(&late_system, true).unwrap(),
        "[INST] Answer in French.\n\nHi [/INST]Hello</s>[INST] Why? [/INST]"
    );
    let system_then_assistant = [ChatMessage::new("system", "Be terse."), ChatMessage::new("assistant", "Hi")];
    assert_eq!(mistral.render(&system_then_assistant, true).unwrap(), "[INST] Be terse. [/INST]Hi</s>");
    assert_eq!(
        gemma.render(&system_then_assistant, true).unwrap(),
        "<start_of_turn>user\nBe terse.<end_of_turn>\n<start_of_turn>model\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
}
