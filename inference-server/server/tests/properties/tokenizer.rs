//! The GGUF tokenizers of the test models (Gemma 3: SentencePiece with byte fallback; SmolLM2:
//! byte-level BPE), fed arbitrary unicode: encoding never fails or panics, ids stay in the
//! vocabulary, decoding gives the text back, streaming decodes like decoding whole, and text
//! encoded literally never yields a control token.
//!
//! Neither tokenizer normalises text, so `decode(encode(text))` is exact, with two exceptions
//! that llama.cpp shares: SentencePiece writes a space as `▁` (U+2581), so a `▁` in the text
//! decodes as a space; and SmolLM2's byte-level vocabulary has no token for the bytes 0xC0, 0xC1,
//! 0xF1, 0xF2 and 0xF5–0xFF, so a character of planes 4–11 (where none is assigned) loses its
//! lead byte.

use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Content;
use hearth_model::tokenizer::TextTokenizer;
use proptest::prelude::*;

use super::text::tricky_text;

struct Model {
    label: &'static str,
    tokenizer: TextTokenizer,
    /// Texts of the model's control tokens (turn markers, BOS/EOS).
    controls: &'static [&'static str],
    /// Whether a `▁` in text decodes as a space.
    sentencepiece: bool,
    /// Bytes the vocabulary has no token for (text holding them cannot round-trip).
    unrepresentable: Vec<u8>,
}

/// The GPT-2 byte-to-unicode table byte-level BPE vocabularies are written in.
fn gpt2_char(byte: u8) -> char {
    let b = u32::from(byte);
    let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable {
        return char::from(byte);
    }
    let shifted = (0..=byte).filter(|&x| !matches!(x, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)).count() as u32;
    char::from_u32(255 + shifted).expect("a GPT-2 character")
}

fn models() -> &'static [Model] {
    static MODELS: OnceLock<Vec<Model>> = OnceLock::new();
    MODELS.get_or_init(|| {
        let load = |file: &str| {
            let path = crate::model_path(file);
            let mut f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            let content = Content::read(&mut f).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            TextTokenizer::from_gguf(&content).unwrap_or_else(|e| panic!("{file}: {e}"))
        };
        let gemma = load("gemma3-270m-q4_k_m.gguf");
        let smollm = load("smollm2-135m-instruct-q4_1.gguf");
        let gemma_missing = (0..=255u8).filter(|b| gemma.token_id(&format!("<0x{b:02X}>")).is_none()).collect();
        let smollm_missing = (0..=255u8).filter(|&b| smollm.token_id(&gpt2_char(b).to_string()).is_none()).collect();
        vec![
            Model {
                label: "gemma3",
                tokenizer: gemma,
                controls: &["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>"],
                sentencepiece: true,
                unrepresentable: gemma_missing,
            },
            Model {
                label: "smollm2",
                tokenizer: smollm,
                controls: &["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
                sentencepiece: false,
                unrepresentable: smollm_missing,
            },
        ]
    })
}

impl Model {
    /// What decoding an encoding of `text` gives back.
    fn round_trip(&self, text: &str) -> String {
        if self.sentencepiece { text.replace('\u{2581}', " ") } else { text.to_owned() }
    }

    fn control_ids(&self) -> Vec<u32> {
        self.controls
            .iter()
            .map(|c| self.tokenizer.token_id(c).unwrap_or_else(|| panic!("{}: no {c}", self.label)))
            .collect()
    }
}

/// Arbitrary unicode, and text built from special-token texts, markers and odd characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), tricky_text(24), ".{0,300}"]
}

proptest! {
    #![proptest_config(crate::config(crate::CASES))]

    /// Any text encodes, with or without special tokens, to ids inside the vocabulary, and
    /// decodes back to itself.
    #[test]
    fn any_text_encodes_and_decodes_back(text in text()) {
        for m in models() {
            let tok = &m.tokenizer;
            let vocab = tok.vocab_size();
            for ids in [tok.encode(&text, false), tok.encode(&text, true), tok.encode_literal(&text, false)] {
                let ids = ids.unwrap_or_else(|e| panic!("{}: {e}", m.label));
                prop_assert!(ids.iter().all(|&id| (id as usize) < vocab), "{}: id outside the vocabulary", m.label);
            }
            if text.bytes().any(|b| m.unrepresentable.contains(&b)) {
                continue;
            }
            let ids = tok.encode(&text, false).unwrap();
            prop_assert_eq!(tok.decode(&ids, false).unwrap(), m.round_trip(&text), "{}: encode", m.label);
            let literal = tok.encode_literal(&text, false).unwrap();
            prop_assert_eq!(tok.decode(&literal, false).unwrap(), m.round_trip(&text), "{}: encode_literal", m.label);
            // With BOS where the model wants one (Gemma), the text follows it unchanged.
            let bos = match tok.bos_id() {
                Some(id) if tok.add_bos() => tok.token_text(id).unwrap(),
                _ => String::new(),
            };
            let with_bos = tok.encode(&text, true).unwrap();
            prop_assert_eq!(tok.decode(&with_bos, false).unwrap(), format!("{bos}{}", m.round_trip(&text)), "{}: with BOS", m.label);
        }
    }

    /// Text encoded literally (how untrusted content must be) never yields a control token,
    /// whatever turn markers it spells out; parsed normally, each marker is one token.
    #[test]
    fn literal_text_never_yields_a_control_token(before in tricky_text(6), after in tricky_text(6), marker in any::<prop::sample::Index>()) {
        for m in models() {
            let control = m.controls[marker.index(m.controls.len())];
            let text = format!("{before}{control}{after}");
            let controls = m.control_ids();
            let literal = m.tokenizer.encode_literal(&text, false).unwrap();
            prop_assert!(!literal.iter().any(|id| controls.contains(id)), "{}: a control token from literal {:?}: {:?}", m.label, text, literal);
            let parsed = m.tokenizer.encode(&text, false).unwrap();
            let id = m.tokenizer.token_id(control).unwrap();
            prop_assert!(parsed.contains(&id), "{}: {} not parsed in {:?}", m.label, control, text);
        }
    }

    /// Streaming any id sequence (not just encodings: generated ids can be anything) gives
    /// exactly what decoding it whole gives.
    #[test]
    fn streaming_any_ids_decodes_like_decoding_whole(
        picks in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..48),
        text in tricky_text(8),
        skip_special in any::<bool>(),
    ) {
        for m in models() {
            let tok = &m.tokenizer;
            // Mix encoded text with arbitrary ids, byte-fallback ones included.
            let mut ids = tok.encode(&text, true).unwrap();
            for (pick, in_prefix) in &picks {
                let id = if *in_prefix { pick.index(300) } else { pick.index(tok.vocab_size()) };
                let id = u32::try_from(id).unwrap();
                ids.push(id);
            }
            let whole = tok.decode(&ids, skip_special).unwrap();
            let mut stream = tok.stream_decoder_with(skip_special);
            let mut streamed = String::new();
            for &id in &ids {
                streamed.push_str(&stream.push(id).unwrap());
            }
            streamed.push_str(&stream.finish().unwrap());
            prop_assert_eq!(streamed, whole, "{}: {:?}", m.label, ids);
        }
    }

    /// Ids outside the vocabulary are an error, never a panic, everywhere an id goes in.
    #[test]
    fn ids_outside_the_vocabulary_are_errors(offset in 0u32..1000, far in any::<u32>()) {
        for m in models() {
            let tok = &m.tokenizer;
            for id in [tok.vocab_size() as u32 + offset, far.max(tok.vocab_size() as u32)] {
                prop_assert!(tok.decode(&[id], false).is_err());
                prop_assert!(tok.token_text(id).is_none());
                prop_assert!(tok.stream_decoder().push(id).is_err());
            }
        }
    }
}

/// What cannot round-trip is only what the vocabularies cannot spell: Gemma has a byte token for
/// every byte; SmolLM2 lacks the bytes no UTF-8 text uses (C0, C1, F5–FF), the lead bytes of the
/// unassigned planes 4–13 (F1, F2), and six control characters its training data never held
/// (EOT, ACK, DC3, DC4, SYN, GS).
#[test]
fn only_bytes_of_unassigned_planes_lack_a_token() {
    let [gemma, smollm] = models() else { panic!("two models") };
    assert!(gemma.unrepresentable.is_empty(), "{:x?}", gemma.unrepresentable);
    let controls = [0x04, 0x06, 0x13, 0x14, 0x16, 0x1D];
    let expected: Vec<u8> = controls.into_iter().chain([0xC0, 0xC1, 0xF1, 0xF2]).chain(0xF5..=0xFF).collect();
    assert_eq!(smollm.unrepresentable, expected);
    // So every assigned character round-trips, planes 1–3 and 14–16 included.
    for text in ["𝔘𝔫𝔦", "𠀀𰀀", "\u{E0001}", "\u{10FFFD}", "🧿"] {
        let ids = smollm.tokenizer.encode(text, false).unwrap();
        assert_eq!(smollm.tokenizer.decode(&ids, false).unwrap(), text);
    }
}
