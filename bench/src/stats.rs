//! Medians and percentiles of samples in milliseconds.

use serde_json::{json, Value};
use std::time::Duration;

#[derive(Default, Clone)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }

    /// The `p`th percentile (nearest rank), 0 when empty.
    pub fn percentile(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    pub fn median(&self) -> f64 {
        self.percentile(50.0)
    }

    /// Element-wise sums of two series taken in the same runs (ADD + DEL of one pod).
    pub fn paired_sum(&self, other: &Samples) -> Samples {
        Samples(self.0.iter().zip(&other.0).map(|(a, b)| a + b).collect())
    }

    pub fn to_json(&self) -> Value {
        json!({"n": self.0.len(), "median": self.median(), "p95": self.percentile(95.0), "samples": self.0})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Samples((1..=100).map(f64::from).collect());
        assert_eq!(s.median(), 50.0);
        assert_eq!(s.percentile(95.0), 95.0);
        assert_eq!(Samples(vec![3.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(Samples::default().median(), 0.0);
    }

    #[test]
    fn paired_sum_adds_runs_of_the_same_pod() {
        let sum = Samples(vec![1.0, 2.0]).paired_sum(&Samples(vec![10.0, 20.0]));
        assert_eq!(sum.0, vec![11.0, 22.0]);
    }
}
