//! Tokenizers read from a Hugging Face `tokenizer.json` (through the `tokenizers` crate).

use std::path::Path;

use super::gguf::END_OF_GENERATION_TEXTS;
use super::*;

pub(crate) struct JsonTokenizer {
    pub(crate) tokenizer: tokenizers::Tokenizer,
    pub(crate) vocab_size: usize,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) add_bos: bool,
    pub(crate) stop_ids: Vec<u32>,
}

impl JsonTokenizer {
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let file_error =
            |path: &Path, message: String| TokenizerError::TokenizerFile { path: path.to_path_buf(), message };
        let mut tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| file_error(path, e.to_string()))?;
        // Prompts are encoded one at a time and must not be cut or padded behind the caller's back.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| file_error(path, format!("cannot disable truncation: {e}")))?;
        // Computing the size copies the whole vocabulary, so do it once.
        let vocab_size = tokenizer.get_vocab_size(true);

        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => serde_json::from_str(&s).map(Some).map_err(|e| file_error(&p, e.to_string())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(file_error(&p, e.to_string())),
            }
        };
        let config = read_json("tokenizer_config.json")?;
        let generation = read_json("generation_config.json")?;

        let token_from_config = |field: &str| -> Option<u32> {
            let v = config.as_ref()?.get(field)?;
            let text = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            tokenizer.token_to_id(text)
        };
        let first_known = |names: &[&str]| names.iter().find_map(|n| tokenizer.token_to_id(n));

        let bos = token_from_config("bos_token")
            .or_else(|| first_known(&["<|begin_of_text|>", "<bos>", "<s>", "<|startoftext|>", "[CLS]"]));
        let eos = token_from_config("eos_token")
            .or_else(|| first_known(&["<|end_of_text|>", "<eos>", "</s>", "<|endoftext|>", "[SEP]"]));

        let mut stop_ids: Vec<u32> = eos.into_iter().collect();
        if let Some(v) = generation.as_ref().and_then(|g| g.get("eos_token_id")) {
            match v {
                serde_json::Value::Array(items) => {
                    stop_ids.extend(items.iter().filter_map(|i| i.as_u64()).filter_map(|i| u32::try_from(i).ok()))
                }
                other => stop_ids.extend(other.as_u64().and_then(|i| u32::try_from(i).ok())),
            }
        }
        stop_ids.extend(END_OF_GENERATION_TEXTS.iter().filter_map(|t| tokenizer.token_to_id(t)));
        stop_ids.sort_unstable();
        stop_ids.dedup();

        let add_bos = match bos {
            Some(b) => tokenizer.encode("a", true).map(|enc| enc.get_ids().first() == Some(&b)).unwrap_or(false),
            None => false,
        };
        Ok(Self { tokenizer, vocab_size, bos, eos, add_bos, stop_ids })
    }

    pub(crate) fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, add_special).map_err(|e| TokenizerError::Library(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub(crate) fn check_id(&self, id: u32) -> Result<()> {
        if (id as usize) < self.vocab_size {
            Ok(())
        } else {
            Err(TokenizerError::UnknownTokenId { id, vocab_size: self.vocab_size })
        }
    }

    pub(crate) fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.tokenizer.decode(ids, skip_special).map_err(|e| TokenizerError::Library(e.to_string()))
    }
}
