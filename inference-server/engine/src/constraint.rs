//! Constrained decoding: a grammar (a JSON schema, a Lark grammar) that a sequence's output must
//! follow, enforced by masking every token that would leave it before sampling. Grammars are
//! compiled by llguidance, the structured-output engine llama.cpp and vLLM use, over the model's
//! own token bytes; a sequence without a grammar pays nothing.
//!
//! The worker computes a sequence's next mask while the model runs the forward pass that
//! produces its logits (the mask depends only on the tokens already chosen), so a constrained
//! step costs the mask's time only where it is longer than the forward pass.

use std::fmt;
use std::sync::Arc;

use hearth_model::tokenizer::TextTokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

/// What a sequence's output must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// One JSON document valid against this JSON schema (`{"type": "object"}`: any object).
    JsonSchema(serde_json::Value),
    /// A grammar in llguidance's Lark dialect (which embeds JSON schemas with `%json`).
    Lark(String),
}

/// Why a grammar cannot constrain this model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrammarError {
    /// The model's tokenizer gives no token bytes to build the token trie from.
    #[error("constrained decoding needs a GGUF tokenizer; this model has none")]
    NoTokenBytes,
    /// The grammar (or schema) is not one llguidance accepts.
    #[error("{0}")]
    Invalid(String),
}

/// Compiles grammars against one model's vocabulary (built once per model: the token trie
/// of a 150k-token vocabulary takes tens of milliseconds).
pub struct GrammarCompiler {
    factory: ParserFactory,
    stop_ids: Vec<u32>,
}

impl GrammarCompiler {
    /// A compiler for this tokenizer's vocabulary; its stop ids end a finished grammar.
    pub fn new(tokenizer: Arc<TextTokenizer>) -> Result<Self, GrammarError> {
        let words = tokenizer.grammar_token_bytes().ok_or(GrammarError::NoTokenBytes)?;
        let stop_ids = tokenizer.stop_ids().to_vec();
        let eos = *stop_ids.first().ok_or_else(|| GrammarError::Invalid("the model has no stop token".into()))?;
        let info = TokRxInfo {
            vocab_size: words.len() as u32,
            tok_eos: eos,
            tok_bos: tokenizer.bos_id(),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: stop_ids.get(1).copied(),
        };
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(ModelTokens { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| GrammarError::Invalid(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory, stop_ids })
    }

    /// Compiles a grammar into a fresh constraint for one sequence.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, GrammarError> {
        let top = match grammar {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(with_layout(schema)),
            Grammar::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
        };
        let parser = self.factory.create_parser(top).map_err(|e| GrammarError::Invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(GrammarError::Invalid(error));
        }
        Ok(Constraint { matcher, stop_ids: self.stop_ids.clone() })
    }
}

/// The schema with Hearth's JSON layout: `{"a": 1, "b": [2, 3]}` — one space after `:` and `,`
/// and none elsewhere. llguidance's default allows any whitespace anywhere, and a small model
/// can then fill its whole budget with newlines; a schema's own `x-guidance` options win.
fn with_layout(schema: &serde_json::Value) -> serde_json::Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(
            || serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// The token trie plus the model's own tokenizer, as llguidance asks for them.
struct ModelTokens {
    trie: TokTrie,
    tokenizer: Arc<TextTokenizer>,
}

impl TokenizerEnv for ModelTokens {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<TokenId> {
        self.tokenizer.encode_literal(&String::from_utf8_lossy(bytes), false).unwrap_or_default()
    }
}

/// A compiled grammar following one sequence: which tokens may come next, and the tokens chosen.
pub struct Constraint {
    matcher: Matcher,
    stop_ids: Vec<u32>,
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).finish()
    }
}

/// The tokens a constrained sequence may choose next.
pub struct TokenMask {
    allowed: SimpleVob,
    /// The model's stop tokens, allowed where the grammar is complete (empty elsewhere).
    stops: Vec<u32>,
}

impl TokenMask {
    /// Sets every logit the grammar forbids to −∞ (ids beyond the vocabulary too); stop ids
    /// stay allowed only where the grammar may end.
    pub fn apply(&self, logits: &mut [f32]) {
        // The grammar allows one end token; every stop token of the model counts as ending.
        let kept: Vec<(usize, f32)> =
            self.stops.iter().filter_map(|&id| logits.get(id as usize).map(|&logit| (id as usize, logit))).collect();
        let known = self.allowed.len().min(logits.len());
        // A word of the bit set at a time: most words are all-allowed or all-forbidden.
        for (chunk, &word) in logits[..known].chunks_mut(32).zip(self.allowed.as_slice()) {
            match word {
                u32::MAX => {}
                0 => chunk.fill(f32::NEG_INFINITY),
                _ => {
                    for (bit, logit) in chunk.iter_mut().enumerate() {
                        if word & (1 << bit) == 0 {
                            *logit = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        // Rows past the tokenizer's vocabulary (padding in the output matrix) are never text.
        logits[known..].fill(f32::NEG_INFINITY);
        for (id, logit) in kept {
            logits[id] = logit;
        }
    }
}

impl Constraint {
    /// The tokens that keep the output inside the grammar.
    pub fn mask(&mut self) -> Result<TokenMask, String> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(|e| e.to_string())?;
        let may_stop = self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false);
        let stops = if may_stop { self.stop_ids.clone() } else { Vec::new() };
        Ok(TokenMask { allowed, stops })
    }

    /// Records a chosen token (a stop token ends the grammar and is not fed to it).
    pub fn accept(&mut self, token: u32) -> Result<(), String> {
        if self.stop_ids.contains(&token) {
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// Whether the grammar is complete and admits nothing more: the output ends here.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Self { matcher: self.matcher.deep_clone(), stop_ids: self.stop_ids.clone() }
    }
}
