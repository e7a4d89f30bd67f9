//! Typed access to GGUF metadata values, with errors that name the key and what was expected.

use candle_core::quantized::gguf_file::{Content, Value};

use super::super::{Result, TokenizerError};

pub(crate) fn invalid(key: &str, expected: &'static str, found: &str) -> TokenizerError {
    TokenizerError::InvalidMetadata { key: key.to_string(), expected, found: found.to_string() }
}

pub(crate) fn meta_str<'a>(content: &'a Content, key: &str) -> Result<Option<&'a str>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(invalid(key, "a string", &format!("{:?}", other.value_type()))),
    }
}

pub(crate) fn required_str<'a>(content: &'a Content, key: &str, expected: &'static str) -> Result<&'a str> {
    meta_str(content, key)?.ok_or_else(|| TokenizerError::MissingMetadata { key: key.to_string(), expected })
}

pub(crate) fn meta_array<'a>(content: &'a Content, key: &str) -> Result<Option<&'a [Value]>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::Array(values)) => Ok(Some(values.as_slice())),
        Some(other) => Err(invalid(key, "an array", &format!("{:?}", other.value_type()))),
    }
}

pub(crate) fn required_array<'a>(content: &'a Content, key: &str, expected: &'static str) -> Result<&'a [Value]> {
    meta_array(content, key)?.ok_or_else(|| TokenizerError::MissingMetadata { key: key.to_string(), expected })
}

pub(crate) fn meta_bool(content: &Content, key: &str) -> Result<Option<bool>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => match value_as_i64(v) {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(invalid(key, "a boolean", &format!("{v:?}"))),
        },
    }
}

/// A token id from metadata; ids outside the vocabulary are ignored (llama.cpp warns and keeps
/// its default).
pub(crate) fn meta_token_id(content: &Content, key: &str, vocab_len: usize) -> Result<Option<u32>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(v) => {
            let id = value_as_i64(v).ok_or_else(|| invalid(key, "an integer token id", &format!("{v:?}")))?;
            Ok(u32::try_from(id).ok().filter(|&id| (id as usize) < vocab_len))
        }
    }
}

pub(crate) fn value_as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(i64::from(*x)),
        Value::I8(x) => Some(i64::from(*x)),
        Value::U16(x) => Some(i64::from(*x)),
        Value::I16(x) => Some(i64::from(*x)),
        Value::U32(x) => Some(i64::from(*x)),
        Value::I32(x) => Some(i64::from(*x)),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}
