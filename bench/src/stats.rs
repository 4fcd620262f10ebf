//! Medians, percentiles and resampled intervals of samples in milliseconds, and the order subjects take turns in.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
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

/// The order in which `n` subjects take their turn in round `round`: shuffled anew each round (seeded, so a run
/// can be repeated). A rotation (A B C, B C A, …) keeps who runs right after whom: with it, the floor ran right after
/// the reference's ptp in two rounds of three, and at 1000 pods an ADD there took 0.4–0.5 ms more than elsewhere.
pub fn round_order(round: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(round as u64));
    order
}

/// How often `resampled_interval` draws the series again.
const RESAMPLINGS: usize = 2000;

/// A 95% interval for `statistic` of `series`: its 2.5th and 97.5th percentiles over series drawn again from
/// their own samples, with replacement (a percentile bootstrap), i.e. where it would fall in another run like
/// this one. The draws are seeded, so the same samples give the same interval. None when a series is empty.
pub fn resampled_interval(series: &[&Samples], statistic: impl Fn(&[Samples]) -> f64) -> Option<(f64, f64)> {
    if series.iter().any(|s| s.0.is_empty()) {
        return None;
    }
    let mut rng = SmallRng::seed_from_u64(19);
    let mut values: Vec<f64> = (0..RESAMPLINGS)
        .map(|_| {
            let drawn: Vec<Samples> = series
                .iter()
                .map(|s| Samples((0..s.0.len()).map(|_| s.0[rng.random_range(0..s.0.len())]).collect()))
                .collect();
            statistic(&drawn)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    Some((values[RESAMPLINGS / 40], values[RESAMPLINGS - RESAMPLINGS / 40 - 1]))
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

    #[test]
    fn resampled_interval_brackets_the_statistic() {
        let flat = Samples(vec![2.0; 50]);
        assert_eq!(resampled_interval(&[&flat], |s| s[0].median()), Some((2.0, 2.0)));
        // Two series drawn from the same values: their medians' difference is about 0, either way.
        let a = Samples((0..100).map(|i| f64::from(i % 10)).collect());
        let b = Samples((0..100).map(|i| f64::from((i * 7) % 10)).collect());
        let (low, high) = resampled_interval(&[&a, &b], |s| s[0].median() - s[1].median()).unwrap();
        assert!(low < 0.0 && high > 0.0, "{low}..{high}");
        let shifted = Samples(a.0.iter().map(|x| x + 20.0).collect());
        let (low, _) = resampled_interval(&[&shifted, &b], |s| s[0].median() - s[1].median()).unwrap();
        assert!(low > 10.0, "{low}");
        assert_eq!(resampled_interval(&[&a, &Samples::default()], |s| s[0].median()), None);
    }

    #[test]
    fn every_round_takes_every_subject_once_in_an_order_of_its_own() {
        let rounds: Vec<Vec<usize>> = (0..50).map(|r| round_order(r, 4)).collect();
        for order in &rounds {
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3]);
        }
        assert_eq!(round_order(7, 4), rounds[7], "seeded: the same round, the same order");
        // Each subject runs right after each other one in some round, not always after the same one.
        let followed: std::collections::HashSet<(usize, usize)> =
            rounds.iter().flat_map(|o| o.windows(2).map(|w| (w[0], w[1])).collect::<Vec<_>>()).collect();
        assert_eq!(followed.len(), 12);
    }
}
