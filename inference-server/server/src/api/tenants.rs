//! Tenants: each with its own API key (read from a Secret), the models it may call, and its
//! requests-per-minute and tokens-per-minute limits.
//!
//! Keys are compared in constant time against every configured key, tenant or not, so the
//! time a check takes says nothing about which key (or how much of one) matched. Limits are
//! token buckets that refill continuously: a tenant with `requestsPerMinute: 600` may burst 600
//! requests and then gets 10 a second. Tokens are charged when a generation ends (prompt plus
//! generated, also when the client hangs up part-way); a request is admitted while the tenant
//! has any token budget left, so one long answer can overdraw the bucket, and the tenant waits
//! until it has refilled.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use hearth_openai::ApiError;

/// One tenant's access to one model, as configured.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// The tenant's name (metrics, logs, errors).
    pub name: String,
    /// The tenant's API key.
    pub key: String,
    /// The model these limits are for.
    pub model: String,
    /// Requests per minute; unlimited when `None`.
    pub requests_per_minute: Option<u32>,
    /// Prompt plus generated tokens per minute; unlimited when `None`.
    pub tokens_per_minute: Option<u64>,
}

impl std::fmt::Debug for TenantConfig {
    // Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConfig")
            .field("name", &self.name)
            .field("model", &self.model)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .finish_non_exhaustive()
    }
}

/// Reads each tenant's key from the Secret files under `secrets_dir`, laid out as Kubernetes
/// mounts a Secret: `secrets_dir/<secret name>/<key>`. Errors name the Model's field.
pub fn tenants_of_model(
    name: &str,
    tenants: &[hearth_crds::model::Tenant],
    secrets_dir: Option<&Path>,
) -> anyhow::Result<Vec<TenantConfig>> {
    let mut out = Vec::new();
    for (i, tenant) in tenants.iter().enumerate() {
        let field = format!("Model `{name}`: spec.tenants[{i}].apiKeySecretRef");
        let Some(dir) = secrets_dir else {
            anyhow::bail!(
                "{field}: the tenant's key is read from a Secret; give --secrets-dir DIR (or HEARTH_SECRETS_DIR) \
                 holding DIR/{}/{}",
                tenant.api_key_secret_ref.name,
                tenant.api_key_secret_ref.key
            );
        };
        let path = dir.join(&tenant.api_key_secret_ref.name).join(&tenant.api_key_secret_ref.key);
        let key = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{field}: cannot read the key from {}: {e}", path.display()))?
            .trim()
            .to_owned();
        if key.len() < 16 {
            anyhow::bail!("{field}: the key in {} is shorter than 16 characters", path.display());
        }
        out.push(TenantConfig {
            name: tenant.name.clone(),
            key,
            model: name.to_owned(),
            requests_per_minute: tenant.requests_per_minute,
            tokens_per_minute: tenant.tokens_per_minute,
        });
    }
    Ok(out)
}

/// A bucket that holds up to `capacity` units and refills `capacity` per minute.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: u64, now: Instant) -> Self {
        let capacity = per_minute as f64;
        Self { capacity, level: capacity, at: now }
    }

    fn per_second(&self) -> f64 {
        self.capacity / 60.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second()).min(self.capacity);
        self.at = now;
    }

    /// How long until the bucket holds `amount`.
    fn wait_for(&self, amount: f64) -> Duration {
        Duration::from_secs_f64(((amount - self.level).max(0.0) / self.per_second()).min(3600.0))
    }

    /// Takes `amount` if the bucket holds it; else says how long until it would.
    fn take(&mut self, amount: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= amount {
            self.level -= amount;
            Ok(())
        } else {
            Err(self.wait_for(amount))
        }
    }

    /// Ok while anything is left; else how long until there is.
    fn has_budget(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= 1.0 { Ok(()) } else { Err(self.wait_for(1.0)) }
    }

    /// Takes `amount`, overdrawing when needed.
    fn charge(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.level -= amount;
    }
}

/// One tenant's standing on one model: its configuration and what it has used.
#[derive(Debug)]
pub struct Tenant {
    config: TenantConfig,
    buckets: Mutex<(Option<Bucket>, Option<Bucket>)>,
}

impl Tenant {
    fn new(config: TenantConfig) -> Self {
        let now = Instant::now();
        let requests = config.requests_per_minute.map(|n| Bucket::new(u64::from(n), now));
        let tokens = config.tokens_per_minute.map(|n| Bucket::new(n, now));
        Self { config, buckets: Mutex::new((requests, tokens)) }
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Admits one request now, or says which limit it is over.
    pub fn admit(&self) -> Result<(), ApiError> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Result<(), ApiError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (requests, tokens) = &mut *buckets;
        // Tokens first: a request refused for tokens must not use up a request.
        if let Some(bucket) = tokens.as_mut() {
            bucket.has_budget(now).map_err(|wait| self.limited("tokensPerMinute", bucket.capacity, wait))?;
        }
        if let Some(bucket) = requests.as_mut() {
            bucket.take(1.0, now).map_err(|wait| self.limited("requestsPerMinute", bucket.capacity, wait))?;
        }
        Ok(())
    }

    /// Charges tokens a request used.
    pub fn charge_tokens(&self, tokens: usize) {
        self.charge_tokens_at(tokens, Instant::now());
    }

    fn charge_tokens_at(&self, tokens: usize, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = buckets.1.as_mut() {
            bucket.charge(tokens as f64, now);
        }
    }

    fn limited(&self, limit: &'static str, per_minute: f64, wait: Duration) -> ApiError {
        ApiError::RateLimited {
            tenant: self.config.name.clone(),
            limit,
            per_minute: per_minute as u64,
            retry_after_seconds: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
}

/// Who a request's key says it is.
#[derive(Clone, Debug)]
pub enum Caller {
    /// No keys are configured: everyone is let in.
    Anonymous,
    /// A key from `--api-key-file`: every route and model, no limits.
    Operator,
    /// A tenant's key, with its standing on each model it may call.
    Tenant(TenantKey),
}

/// A tenant's key matched: its name and its standing per model.
#[derive(Clone, Debug)]
pub struct TenantKey {
    /// The tenant's name.
    pub name: String,
    models: BTreeMap<String, Arc<Tenant>>,
}

impl TenantKey {
    /// The tenant's standing on `model`, if it may call it.
    pub fn on(&self, model: &str) -> Option<&Arc<Tenant>> {
        self.models.get(model)
    }
}

/// Every key the server accepts and the tenants behind them.
#[derive(Debug, Default)]
pub struct Keys {
    operator_keys: Vec<String>,
    tenants: Vec<Arc<Tenant>>,
}

impl Keys {
    /// Builds the key table. A tenant's key may not also be an operator key, nor belong to two
    /// tenants; the same tenant may be listed on several models (with one key).
    pub fn new(operator_keys: Vec<String>, tenants: Vec<TenantConfig>) -> Result<Self, String> {
        for t in &tenants {
            if operator_keys.iter().any(|k| k == &t.key) {
                return Err(format!("tenant `{}`: its key is also an --api-key-file key", t.name));
            }
            if let Some(other) = tenants.iter().find(|o| o.key == t.key && o.name != t.name) {
                return Err(format!("tenants `{}` and `{}` share a key; each needs its own", t.name, other.name));
            }
            if let Some(other) = tenants.iter().find(|o| o.name == t.name && o.key != t.key) {
                return Err(format!(
                    "tenant `{}` has different keys on models `{}` and `{}`; use one Secret",
                    t.name, t.model, other.model
                ));
            }
        }
        Ok(Self { operator_keys, tenants: tenants.into_iter().map(|t| Arc::new(Tenant::new(t))).collect() })
    }

    /// Whether any key is configured (else the API is open).
    pub fn required(&self) -> bool {
        !self.operator_keys.is_empty() || !self.tenants.is_empty()
    }

    /// Whether `model` is reserved to its tenants.
    pub fn is_tenanted(&self, model: &str) -> bool {
        self.tenants.iter().any(|t| t.config.model == model)
    }

    /// Who presented `key`, or `None` for an unknown key. Every configured key is compared, in
    /// constant time, whatever matches first.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        if !self.required() {
            return Some(Caller::Anonymous);
        }
        let presented = presented.as_bytes();
        let operator = self.operator_keys.iter().fold(0u8, |acc, k| acc | k.as_bytes().ct_eq(presented).unwrap_u8());
        let matched: Vec<bool> =
            self.tenants.iter().map(|t| bool::from(t.config.key.as_bytes().ct_eq(presented))).collect();
        if operator == 1 {
            return Some(Caller::Operator);
        }
        let mut models = BTreeMap::new();
        let mut name = None;
        for (tenant, hit) in self.tenants.iter().zip(matched) {
            if hit {
                name = Some(tenant.config.name.clone());
                models.insert(tenant.config.model.clone(), Arc::clone(tenant));
            }
        }
        name.map(|name| Caller::Tenant(TenantKey { name, models }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, key: &str, model: &str, rpm: Option<u32>, tpm: Option<u64>) -> TenantConfig {
        TenantConfig {
            name: name.into(),
            key: key.into(),
            model: model.into(),
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
        }
    }

    #[test]
    fn keys_identify_operators_and_tenants_with_their_models() {
        let keys = Keys::new(
            vec!["operator-key-0000".into()],
            vec![
                config("acme", "acme-key-00000000", "gemma", Some(60), None),
                config("acme", "acme-key-00000000", "smol", None, None),
                config("globex", "globex-key-000000", "gemma", None, None),
            ],
        )
        .unwrap();
        assert!(matches!(keys.identify("operator-key-0000"), Some(Caller::Operator)));
        let Some(Caller::Tenant(acme)) = keys.identify("acme-key-00000000") else { panic!("acme") };
        assert_eq!(acme.name, "acme");
        assert!(acme.on("gemma").is_some() && acme.on("smol").is_some() && acme.on("other").is_none());
        let Some(Caller::Tenant(globex)) = keys.identify("globex-key-000000") else { panic!("globex") };
        assert!(globex.on("smol").is_none());
        assert!(keys.identify("acme-key-0000000").is_none(), "a prefix of a key is not the key");
        assert!(keys.identify("").is_none());
        assert!(keys.is_tenanted("gemma") && !keys.is_tenanted("minilm"));
        assert!(matches!(Keys::default().identify(""), Some(Caller::Anonymous)));
    }

    #[test]
    fn shared_or_conflicting_keys_are_refused() {
        let shared = Keys::new(
            vec![],
            vec![config("a", "k".repeat(16).as_str(), "m", None, None), {
                config("b", "k".repeat(16).as_str(), "m", None, None)
            }],
        );
        assert!(shared.unwrap_err().contains("share a key"));
        let two = Keys::new(
            vec![],
            vec![
                config("a", "1".repeat(16).as_str(), "m", None, None),
                config("a", "2".repeat(16).as_str(), "n", None, None),
            ],
        );
        assert!(two.unwrap_err().contains("different keys"));
        let operator = Keys::new(vec!["k".repeat(16)], vec![config("a", "k".repeat(16).as_str(), "m", None, None)]);
        assert!(operator.unwrap_err().contains("--api-key-file"));
    }

    #[test]
    fn the_request_bucket_bursts_its_limit_then_refills_at_the_rate() {
        let tenant = Tenant::new(config("acme", "x", "m", Some(60), None));
        let t0 = Instant::now();
        for _ in 0..60 {
            tenant.admit_at(t0).unwrap();
        }
        let Err(ApiError::RateLimited { tenant: name, limit, per_minute, retry_after_seconds }) = tenant.admit_at(t0)
        else {
            panic!("the 61st request in the same instant must be refused")
        };
        assert_eq!((name.as_str(), limit, per_minute, retry_after_seconds), ("acme", "requestsPerMinute", 60, 1));
        // One request a second comes back.
        tenant.admit_at(t0 + Duration::from_millis(1000)).unwrap();
        assert!(tenant.admit_at(t0 + Duration::from_millis(1500)).is_err());
        tenant.admit_at(t0 + Duration::from_millis(2000)).unwrap();
    }

    #[test]
    fn tokens_are_admitted_while_budget_remains_and_an_overdraft_waits_for_the_refill() {
        let tenant = Tenant::new(config("acme", "x", "m", None, Some(600)));
        let t0 = Instant::now();
        tenant.admit_at(t0).unwrap();
        tenant.charge_tokens_at(500, t0);
        tenant.admit_at(t0).unwrap();
        tenant.charge_tokens_at(400, t0); // 300 overdrawn
        let Err(ApiError::RateLimited { limit, retry_after_seconds, .. }) = tenant.admit_at(t0) else {
            panic!("an overdrawn tenant must wait")
        };
        // 301 tokens at 10 a second: 31 s.
        assert_eq!((limit, retry_after_seconds), ("tokensPerMinute", 31));
        assert!(tenant.admit_at(t0 + Duration::from_secs(29)).is_err());
        tenant.admit_at(t0 + Duration::from_secs(31)).unwrap();
    }

    #[test]
    fn a_request_refused_for_tokens_uses_no_request() {
        let tenant = Tenant::new(config("acme", "x", "m", Some(1), Some(60)));
        let t0 = Instant::now();
        tenant.charge_tokens_at(120, t0);
        assert!(matches!(tenant.admit_at(t0), Err(ApiError::RateLimited { limit: "tokensPerMinute", .. })));
        // After the token debt is repaid (61 s), the single request is still there.
        tenant.admit_at(t0 + Duration::from_secs(61)).unwrap();
    }

    #[test]
    fn keys_are_read_from_secret_files_and_errors_name_the_field() {
        let tenants: Vec<hearth_crds::model::Tenant> = serde_yaml::from_str(
            "- {name: acme, apiKeySecretRef: {name: acme-key, key: token}, requestsPerMinute: 600}\n\
             - {name: globex, apiKeySecretRef: {name: globex-key, key: token}}\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let missing = tenants_of_model("qwen", &tenants, None).unwrap_err().to_string();
        assert!(missing.contains("Model `qwen`: spec.tenants[0].apiKeySecretRef") && missing.contains("--secrets-dir"));
        let unreadable = tenants_of_model("qwen", &tenants, Some(dir.path())).unwrap_err().to_string();
        assert!(unreadable.contains("acme-key/token"), "{unreadable}");
        for (secret, key) in [("acme-key", "acme-0123456789abcdef\n"), ("globex-key", "short")] {
            std::fs::create_dir(dir.path().join(secret)).unwrap();
            std::fs::write(dir.path().join(secret).join("token"), key).unwrap();
        }
        let short = tenants_of_model("qwen", &tenants, Some(dir.path())).unwrap_err().to_string();
        assert!(short.contains("spec.tenants[1]") && short.contains("shorter than 16"), "{short}");
        std::fs::write(dir.path().join("globex-key/token"), "globex-0123456789abcdef").unwrap();
        let read = tenants_of_model("qwen", &tenants, Some(dir.path())).unwrap();
        assert_eq!(read[0].key, "acme-0123456789abcdef", "the trailing newline is trimmed");
        assert_eq!((read[0].model.as_str(), read[0].requests_per_minute), ("qwen", Some(600)));
        assert_eq!((read[1].name.as_str(), read[1].tokens_per_minute), ("globex", None));
    }

    #[test]
    fn keys_never_reach_debug_output() {
        let c = config("acme", "very-secret-key-123", "m", None, None);
        assert!(!format!("{c:?}").contains("very-secret"));
    }
}
