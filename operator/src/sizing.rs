//! Sizing and capacity planning: what a Model needs (weights, KV cache, memory) and which
//! hardware profile can hold it, with the decode speed its memory bandwidth allows.
//!
//! Decode is memory-bandwidth bound: every generated token reads all the weights once, so
//! tokens/s ≈ bandwidth ÷ weights bytes.

use hearth_crds::model::{Accelerator, ModelSpec};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const GB: f64 = 1e9;

/// A kind of node a model can be scheduled on.
#[derive(Clone, Debug, PartialEq)]
pub struct HardwareProfile {
    /// Name used in `spec.hardware.profile`, e.g. `h100-80gb`.
    pub name: String,
    /// Accelerator kind the profile belongs to.
    pub accelerator: Accelerator,
    /// Memory the model can use, in bytes (GPU memory, or unified memory the GPU may map).
    pub memory_bytes: u64,
    /// Memory bandwidth in bytes per second.
    pub bandwidth_bytes_per_second: f64,
}

impl HardwareProfile {
    fn new(name: &str, accelerator: Accelerator, memory_bytes: f64, bandwidth_bytes_per_second: f64) -> Self {
        Self { name: name.to_owned(), accelerator, memory_bytes: memory_bytes as u64, bandwidth_bytes_per_second }
    }
}

/// The built-in profiles. Apple profiles count the ~75% of unified memory macOS lets the
/// GPU wire by default.
pub fn builtin_profiles() -> Vec<HardwareProfile> {
    use Accelerator::{Apple, Cpu, Nvidia};
    vec![
        HardwareProfile::new("cpu-generic", Cpu, 32.0 * GIB, 40.0 * GB),
        HardwareProfile::new("mac-mini-m4-pro-64gb", Apple, 0.75 * 64.0 * GIB, 273.0 * GB),
        HardwareProfile::new("mac-studio-m2-ultra-192gb", Apple, 0.75 * 192.0 * GIB, 800.0 * GB),
        HardwareProfile::new("mac-studio-m3-ultra-192gb", Apple, 0.75 * 192.0 * GIB, 800.0 * GB),
        HardwareProfile::new("rtx-4090-24gb", Nvidia, 24.0 * GIB, 1008.0 * GB),
        HardwareProfile::new("a100-80gb", Nvidia, 80.0 * GIB, 2039.0 * GB),
        HardwareProfile::new("h100-80gb", Nvidia, 80.0 * GIB, 3350.0 * GB),
    ]
}

/// One entry of a profiles ConfigMap (`profiles.yaml`), e.g.
/// `{name: l40s-48gb, accelerator: nvidia, memoryGiB: 48, bandwidthGBps: 864}`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileEntry {
    name: String,
    accelerator: Accelerator,
    #[serde(rename = "memoryGiB")]
    memory_gib: f64,
    #[serde(rename = "bandwidthGBps")]
    bandwidth_gbps: f64,
}

/// The built-in profiles plus those of a ConfigMap's `profiles.yaml` (a YAML list); an
/// entry with a built-in's name replaces it. Errors name the entry and the field.
pub fn profiles_with_overrides(yaml: &str) -> Result<Vec<HardwareProfile>, String> {
    let entries: Vec<ProfileEntry> = serde_yaml::from_str(yaml).map_err(|e| format!("profiles.yaml: {e}"))?;
    let mut profiles = builtin_profiles();
    for (i, e) in entries.into_iter().enumerate() {
        if !(e.memory_gib > 0.0 && e.bandwidth_gbps > 0.0) {
            return Err(format!("profiles.yaml[{i}] ({}): memoryGiB and bandwidthGBps must be positive", e.name));
        }
        if !hearth_crds::validation::is_dns_label(&e.name) {
            return Err(format!("profiles.yaml[{i}].name: expected a DNS label, found {:?}", e.name));
        }
        profiles.retain(|p| p.name != e.name);
        profiles.push(HardwareProfile::new(&e.name, e.accelerator, e.memory_gib * GIB, e.bandwidth_gbps * GB));
    }
    Ok(profiles)
}

/// Why a model cannot be sized or placed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizingError {
    /// Neither a weights size nor parameters with a quantization are known.
    #[error(
        "cannot size the model: set spec.sizing.parameters and spec.sizing.quantization, or let the fetch step report the weights size"
    )]
    UnknownWeights,
    /// `spec.hardware.profile` names no known profile of the accelerator kind.
    #[error("spec.hardware.profile: no {accelerator:?} profile named \"{name}\"; known: {known}")]
    UnknownProfile {
        /// The requested profile.
        name: String,
        /// The accelerator kind.
        accelerator: Accelerator,
        /// Profiles of that kind.
        known: String,
    },
    /// The model needs more memory than any candidate profile has.
    #[error(
        "needs {needed:.1} GiB per replica (weights {weights:.1} GiB + KV cache {kv:.1} GiB + overhead) but the largest {accelerator:?} profile, {profile}, offers {offered:.1} GiB"
    )]
    FitsNowhere {
        /// Memory needed, GiB.
        needed: f64,
        /// Weights, GiB.
        weights: f64,
        /// KV cache at full context and batch, GiB.
        kv: f64,
        /// The accelerator kind.
        accelerator: Accelerator,
        /// The largest candidate.
        profile: String,
        /// Its usable memory, GiB.
        offered: f64,
    },
}

/// What a model needs and where it fits.
#[derive(Clone, Debug, PartialEq)]
pub struct Footprint {
    /// Bytes of weights.
    pub weights_bytes: u64,
    /// KV-cache bytes per token of context, when the architecture is known.
    pub kv_bytes_per_token: Option<u64>,
    /// Memory one replica needs: weights + KV cache for contextLength × maxBatchSize + overhead.
    pub memory_bytes: u64,
    /// The smallest profile that holds it.
    pub profile: HardwareProfile,
    /// Decode tokens/s the profile's bandwidth allows for one stream.
    pub estimated_decode_tokens_per_second: f64,
}

/// Parses a parameter count such as `270M`, `1.5B` or `70B`.
pub fn parse_parameters(text: &str) -> Option<u64> {
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let scale = match unit {
        "K" => 1e3,
        "M" => 1e6,
        "B" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    let n: f64 = number.parse().ok()?;
    (n.is_finite() && n > 0.0).then_some((n * scale) as u64)
}

/// Bytes of one KV-cache element: f32 on CPU (candle's CPU kernels), f16 on GPUs.
fn kv_element_bytes(accelerator: Accelerator) -> u64 {
    match accelerator {
        Accelerator::Cpu => 4,
        Accelerator::Nvidia | Accelerator::Apple => 2,
    }
}

/// Weights bytes: the size the fetch step reported, else parameters × bits per weight.
pub fn weights_bytes(spec: &ModelSpec, reported: Option<u64>) -> Option<u64> {
    reported.or_else(|| {
        let sizing = spec.sizing.as_ref()?;
        let parameters = parse_parameters(sizing.parameters.as_deref()?)?;
        let bits = sizing.quantization?.bits_per_weight();
        Some((parameters as f64 * bits / 8.0) as u64)
    })
}

/// KV-cache bytes per token: layers × kv-heads × head-dim × 2 (K and V) × element size.
pub fn kv_bytes_per_token(spec: &ModelSpec) -> Option<u64> {
    let s = spec.sizing.as_ref()?;
    let per_token = u64::from(s.layers?) * u64::from(s.kv_heads?) * u64::from(s.head_dim?) * 2;
    Some(per_token * kv_element_bytes(spec.hardware.accelerator))
}

/// Sizes a model and picks the smallest profile of its accelerator kind that holds it.
pub fn plan(
    spec: &ModelSpec,
    reported_weights: Option<u64>,
    profiles: &[HardwareProfile],
) -> Result<Footprint, SizingError> {
    let weights = weights_bytes(spec, reported_weights).ok_or(SizingError::UnknownWeights)?;
    let kv_per_token = kv_bytes_per_token(spec);
    let context = u64::from(spec.context_length.unwrap_or(hearth_crds::model::DEFAULT_CONTEXT_CAP));
    let kv_total = kv_per_token.unwrap_or(0) * context * u64::from(spec.serving.max_batch_size);
    // Runtime, activations and allocator slack: 256 MiB plus 10% of the rest.
    let memory = ((weights + kv_total) as f64 * 1.10) as u64 + 256 * 1024 * 1024;
    let gpus = u64::from(spec.hardware.count.unwrap_or(1));

    let accelerator = spec.hardware.accelerator;
    let mut candidates: Vec<&HardwareProfile> = profiles.iter().filter(|p| p.accelerator == accelerator).collect();
    if let Some(name) = &spec.hardware.profile {
        candidates.retain(|p| &p.name == name);
        if candidates.is_empty() {
            let known = profiles.iter().filter(|p| p.accelerator == accelerator).map(|p| p.name.as_str());
            return Err(SizingError::UnknownProfile {
                name: name.clone(),
                accelerator,
                known: known.collect::<Vec<_>>().join(", "),
            });
        }
    }
    candidates.sort_by_key(|p| p.memory_bytes);
    let usable = |p: &HardwareProfile| p.memory_bytes * if accelerator == Accelerator::Nvidia { gpus } else { 1 };
    match candidates.iter().find(|p| usable(p) >= memory) {
        Some(profile) => Ok(Footprint {
            weights_bytes: weights,
            kv_bytes_per_token: kv_per_token,
            memory_bytes: memory,
            profile: (*profile).clone(),
            estimated_decode_tokens_per_second: profile.bandwidth_bytes_per_second / weights as f64,
        }),
        None => {
            let largest = candidates.last().ok_or_else(|| SizingError::UnknownProfile {
                name: String::new(),
                accelerator,
                known: String::new(),
            })?;
            Err(SizingError::FitsNowhere {
                needed: memory as f64 / GIB,
                weights: weights as f64 / GIB,
                kv: kv_total as f64 / GIB,
                accelerator,
                profile: largest.name.clone(),
                offered: usable(largest) as f64 / GIB,
            })
        }
    }
}

/// A byte count as a Kubernetes quantity in whole MiB (e.g. `1536Mi`), rounded up.
pub fn memory_quantity(bytes: u64) -> String {
    format!("{}Mi", bytes.div_ceil(1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_crds::model::{Hardware, ModelSource, Quantization, SizingHints};

    fn spec(
        parameters: &str,
        quantization: Quantization,
        accelerator: Accelerator,
        profile: Option<&str>,
    ) -> ModelSpec {
        let yaml = "source: {uri: 'hf://org/repo/m.gguf'}";
        let mut spec: ModelSpec = serde_yaml::from_str(yaml).unwrap();
        spec.source = ModelSource { uri: "hf://org/repo/m.gguf".into(), sha256: None, tokenizer: None };
        spec.sizing = Some(SizingHints {
            parameters: Some(parameters.into()),
            quantization: Some(quantization),
            layers: Some(80),
            kv_heads: Some(8),
            head_dim: Some(128),
        });
        spec.hardware = Hardware { accelerator, profile: profile.map(Into::into), ..Hardware::default() };
        spec
    }

    #[test]
    fn parses_parameter_counts() {
        assert_eq!(parse_parameters("270M"), Some(270_000_000));
        assert_eq!(parse_parameters("1.5B"), Some(1_500_000_000));
        assert_eq!(parse_parameters("70B"), Some(70_000_000_000));
        assert_eq!(parse_parameters("B"), None);
        assert_eq!(parse_parameters("12X"), None);
        assert_eq!(parse_parameters(""), None);
    }

    #[test]
    fn a_70b_q4_model_does_not_fit_a_64gb_mac_mini_and_says_why() {
        let spec = spec("70B", Quantization::Q4KM, Accelerator::Apple, Some("mac-mini-m4-pro-64gb"));
        let err = plan(&spec, None, &builtin_profiles()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, SizingError::FitsNowhere { .. }), "{message}");
        assert!(message.contains("mac-mini-m4-pro-64gb"), "{message}");
        assert!(message.contains("weights 39.5 GiB"), "{message}");
    }

    #[test]
    fn a_small_model_fits_the_smallest_cpu_profile_with_a_bandwidth_bound_speed() {
        let mut spec = spec("270M", Quantization::Q4KM, Accelerator::Cpu, None);
        spec.sizing.as_mut().unwrap().layers = Some(18);
        spec.sizing.as_mut().unwrap().kv_heads = Some(1);
        spec.sizing.as_mut().unwrap().head_dim = Some(256);
        let footprint = plan(&spec, Some(253_113_024), &builtin_profiles()).unwrap();
        assert_eq!(footprint.weights_bytes, 253_113_024);
        assert_eq!(footprint.kv_bytes_per_token, Some(18 * 256 * 2 * 4));
        assert_eq!(footprint.profile.name, "cpu-generic");
        let expected = 40e9 / 253_113_024.0;
        assert!((footprint.estimated_decode_tokens_per_second - expected).abs() < 1e-6);
        // weights + 36,864 B/token × 8192 × 16 + overhead
        let kv = 36_864u64 * 8192 * 16;
        assert_eq!(footprint.memory_bytes, ((253_113_024 + kv) as f64 * 1.1) as u64 + 256 * 1024 * 1024);
    }

    #[test]
    fn picks_the_smallest_gpu_that_holds_the_model() {
        let mut spec = spec("8B", Quantization::Q4KM, Accelerator::Nvidia, None);
        spec.sizing.as_mut().unwrap().layers = Some(36);
        spec.context_length = Some(4096);
        spec.serving.max_batch_size = 4;
        let footprint = plan(&spec, None, &builtin_profiles()).unwrap();
        assert_eq!(footprint.profile.name, "rtx-4090-24gb");
        spec.serving.max_batch_size = 64;
        assert_eq!(plan(&spec, None, &builtin_profiles()).unwrap().profile.name, "a100-80gb");
    }

    #[test]
    fn unknown_profile_and_unknown_weights_are_clear_errors() {
        let spec_bad_profile = spec("1B", Quantization::Q8_0, Accelerator::Nvidia, Some("tpu-v5"));
        let err = plan(&spec_bad_profile, None, &builtin_profiles()).unwrap_err().to_string();
        assert!(err.contains("spec.hardware.profile") && err.contains("h100-80gb"), "{err}");
        let mut no_hints = spec("1B", Quantization::Q8_0, Accelerator::Cpu, None);
        no_hints.sizing = None;
        assert_eq!(plan(&no_hints, None, &builtin_profiles()), Err(SizingError::UnknownWeights));
    }

    #[test]
    fn a_configmap_adds_and_replaces_profiles() {
        let yaml = "- {name: l40s-48gb, accelerator: nvidia, memoryGiB: 48, bandwidthGBps: 864}\n\
                    - {name: cpu-generic, accelerator: cpu, memoryGiB: 512, bandwidthGBps: 200}\n";
        let profiles = profiles_with_overrides(yaml).unwrap();
        let l40s = profiles.iter().find(|p| p.name == "l40s-48gb").unwrap();
        assert_eq!(l40s.memory_bytes, 48 * 1024 * 1024 * 1024);
        let cpu: Vec<_> = profiles.iter().filter(|p| p.name == "cpu-generic").collect();
        assert_eq!(cpu.len(), 1);
        assert_eq!(cpu[0].memory_bytes, 512 * 1024 * 1024 * 1024);
        let bad = profiles_with_overrides("- {name: x, accelerator: tpu, memoryGiB: 1, bandwidthGBps: 1}").unwrap_err();
        assert!(bad.contains("tpu"), "{bad}");
        let bad = profiles_with_overrides("- {name: x, accelerator: cpu, memoryGiB: 0, bandwidthGBps: 1}").unwrap_err();
        assert!(bad.contains("profiles.yaml[0]"), "{bad}");
    }

    #[test]
    fn quantities_round_up_to_mebibytes() {
        assert_eq!(memory_quantity(1), "1Mi");
        assert_eq!(memory_quantity(1024 * 1024), "1Mi");
        assert_eq!(memory_quantity(1024 * 1024 + 1), "2Mi");
    }
}
