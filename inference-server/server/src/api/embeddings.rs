//! `POST /v1/embeddings`.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use base64::Engine as _;

use super::{AppState, OpenAiJson};
use hearth_engine::registry::ServedModel;
use hearth_openai::ApiError;
use hearth_openai::wire::{EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage};

/// Most inputs in one request.
const MAX_INPUTS: usize = 2048;

/// `POST /v1/embeddings`: a string or a list of strings in, one vector each out.
pub async fn embeddings(
    State(state): State<AppState>,
    tenant: Option<axum::Extension<std::sync::Arc<super::tenants::Tenant>>>,
    OpenAiJson(request): OpenAiJson<EmbeddingRequest>,
) -> Result<axum::response::Response, ApiError> {
    let service = match state.registry.get(&request.model) {
        Some(ServedModel::Embedding(s)) => s,
        Some(ServedModel::Chat(_)) => {
            return Err(ApiError::WrongTask { model: request.model, serves: "text generation", asked: "embeddings" });
        }
        None if !state.registry.is_ready() => return Err(ApiError::NotReady),
        None => return Err(ApiError::ModelNotFound(request.model)),
    };
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format must be float or base64, got `{other}`"),
            ));
        }
    };
    if let Some(d) = request.dimensions
        && d as usize != service.dimension
    {
        return Err(ApiError::invalid(
            "dimensions",
            format!("this model produces {} dimensions and cannot shorten them; got {d}", service.dimension),
        ));
    }
    let inputs = request.input.into_vec();
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!("input must hold 1 to {MAX_INPUTS} strings, got {}", inputs.len()),
        ));
    }
    let started = std::time::Instant::now();
    let (vectors, tokens) = service.embed(inputs).await.map_err(super::generation::engine_error)?;
    drop(tenant.map(|t| super::generation::TenantCharge::new(t.0, state.metrics.clone(), &service.name, tokens)));
    let labels = super::metrics::Metrics::model(&service.name);
    state.metrics.prompt_tokens.get_or_create(&labels).inc_by(tokens as u64);
    state.metrics.time_to_first_token.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                serde_json::json!(v)
            };
            EmbeddingData { object: "embedding".into(), embedding, index }
        })
        .collect();
    let body = Json(EmbeddingResponse {
        object: "list".into(),
        data,
        model: service.name.clone(),
        usage: EmbeddingUsage { prompt_tokens: tokens, total_tokens: tokens },
    });
    let mut response = body.into_response();
    response.extensions_mut().insert(hearth_openai::ServedName(service.name.clone()));
    Ok(response)
}
