//! Scores an answer's confidence from the log-probabilities of its sampled tokens.

use hearth_crds::cascade::ConfidenceMeasure;

/// The answer's confidence in [0, 1] under `measure`. An answer with no tokens scores 0:
/// an empty answer is never a confident one, so it escalates.
pub fn score(measure: ConfidenceMeasure, logprobs: &[f64]) -> f64 {
    if logprobs.is_empty() {
        return 0.0;
    }
    // Upstreams clamp at 0, but a malformed value must not push a score above 1.
    let clamped = logprobs.iter().map(|lp| if lp.is_nan() { f64::NEG_INFINITY } else { lp.min(0.0) });
    let n = logprobs.len() as f64;
    let value = match measure {
        ConfidenceMeasure::MeanTokenProbability => clamped.map(f64::exp).sum::<f64>() / n,
        ConfidenceMeasure::MinTokenProbability => clamped.map(f64::exp).fold(1.0, f64::min),
        ConfidenceMeasure::MeanLogprob => (clamped.sum::<f64>() / n).exp(),
    };
    value.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    #[test]
    fn mean_probability_averages_probabilities() {
        let lps = [0.5f64.ln(), 1.0f64.ln()];
        assert!((score(ConfidenceMeasure::MeanTokenProbability, &lps) - 0.75).abs() < EPS);
    }

    #[test]
    fn min_probability_takes_the_least_sure_token() {
        let lps = [0.9f64.ln(), 0.2f64.ln(), 0.99f64.ln()];
        assert!((score(ConfidenceMeasure::MinTokenProbability, &lps) - 0.2).abs() < EPS);
    }

    #[test]
    fn mean_logprob_is_the_geometric_mean() {
        let lps = [0.5f64.ln(), 0.125f64.ln()];
        assert!((score(ConfidenceMeasure::MeanLogprob, &lps) - 0.25).abs() < EPS);
    }

    #[test]
    fn measures_order_as_expected_and_stay_in_range() {
        let lps = [0.9f64.ln(), 0.3f64.ln(), 0.6f64.ln()];
        let mean = score(ConfidenceMeasure::MeanTokenProbability, &lps);
        let geo = score(ConfidenceMeasure::MeanLogprob, &lps);
        let min = score(ConfidenceMeasure::MinTokenProbability, &lps);
        assert!(min <= geo && geo <= mean, "min {min} <= geometric {geo} <= arithmetic {mean}");
        for bad in [[0.5, f64::NAN], [f64::NEG_INFINITY, 0.0], [3.0, 0.0]] {
            for m in [
                ConfidenceMeasure::MeanTokenProbability,
                ConfidenceMeasure::MinTokenProbability,
                ConfidenceMeasure::MeanLogprob,
            ] {
                let s = score(m, &bad);
                assert!((0.0..=1.0).contains(&s), "{m:?} of {bad:?} gave {s}");
            }
        }
    }

    #[test]
    fn an_empty_answer_has_no_confidence() {
        assert_eq!(score(ConfidenceMeasure::MeanTokenProbability, &[]), 0.0);
    }
}
