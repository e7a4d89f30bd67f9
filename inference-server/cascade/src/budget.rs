//! The escalation budget: the share of recent requests that went past the first stage,
//! over a sliding window of the last N requests.

use std::collections::VecDeque;

/// Fewest requests before the budget can be judged exceeded, so one early escalation
/// does not raise the alarm.
const MIN_SAMPLES: usize = 10;

/// A sliding window of escalation outcomes.
#[derive(Debug)]
pub struct EscalationWindow {
    capacity: usize,
    outcomes: VecDeque<bool>,
    escalated: usize,
    max_ratio: Option<f64>,
}

/// The window's state after a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetState {
    /// Escalated share of the requests in the window.
    pub ratio: f64,
    /// Requests in the window.
    pub requests: usize,
    /// Whether the ratio is above the budget (with enough requests to judge).
    pub exceeded: bool,
}

impl EscalationWindow {
    /// A window over the last `capacity` requests; `max_ratio` is the budget, if any.
    pub fn new(capacity: usize, max_ratio: Option<f64>) -> Self {
        let capacity = capacity.max(1);
        Self { capacity, outcomes: VecDeque::with_capacity(capacity.min(4096)), escalated: 0, max_ratio }
    }

    /// Records one request and returns the new state.
    pub fn record(&mut self, escalated: bool) -> BudgetState {
        if self.outcomes.len() == self.capacity && self.outcomes.pop_front() == Some(true) {
            self.escalated -= 1;
        }
        self.outcomes.push_back(escalated);
        self.escalated += usize::from(escalated);
        self.state()
    }

    /// The current state.
    pub fn state(&self) -> BudgetState {
        let requests = self.outcomes.len();
        let ratio = if requests == 0 { 0.0 } else { self.escalated as f64 / requests as f64 };
        let judged = requests >= MIN_SAMPLES.min(self.capacity);
        let exceeded = judged && self.max_ratio.is_some_and(|max| ratio > max);
        BudgetState { ratio, requests, exceeded }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_follows_only_the_last_requests() {
        let mut w = EscalationWindow::new(4, None);
        for e in [true, true, false, false] {
            w.record(e);
        }
        assert_eq!(w.state().ratio, 0.5);
        w.record(false);
        w.record(false);
        assert_eq!(w.state().ratio, 0.0, "the two escalations slid out of the window");
        assert_eq!(w.state().requests, 4);
    }

    #[test]
    fn the_budget_is_judged_after_enough_requests() {
        let mut w = EscalationWindow::new(100, Some(0.3));
        for _ in 0..9 {
            assert!(!w.record(true).exceeded, "nine requests are too few to judge");
        }
        assert!(w.record(true).exceeded);
        for _ in 0..90 {
            w.record(false);
        }
        let state = w.state();
        assert!((state.ratio - 0.1).abs() < 1e-12);
        assert!(!state.exceeded);
    }

    #[test]
    fn without_a_budget_nothing_is_exceeded() {
        let mut w = EscalationWindow::new(10, None);
        for _ in 0..20 {
            assert!(!w.record(true).exceeded);
        }
    }
}
