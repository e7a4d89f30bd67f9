//! hearth-server: candle backends behind an OpenAI-compatible API (in progress).
