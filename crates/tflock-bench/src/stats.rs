//! Percentiles, Jain's fairness index and the summaries the report prints. Durations
//! are kept as milliseconds (`f64`) so results from the Python peers (which report
//! milliseconds) go through exactly the same arithmetic.

use serde::{Deserialize, Serialize};

/// Nearest-rank percentile (`p` in 0..=100) of `sorted` (ascending); 0 when empty.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // The small epsilon keeps 99.9% of 1000 at rank 999 despite float rounding.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Jain's fairness index over per-client counts: 1 when all are equal, 1/n when one
/// client got everything.
pub fn jain(counts: &[u64]) -> f64 {
    let n = counts.len() as f64;
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let sq: f64 = counts.iter().map(|&c| (c as f64) * (c as f64)).sum();
    if sq == 0.0 { 0.0 } else { sum * sum / (n * sq) }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn of(mut ms: Vec<f64>) -> Latency {
        ms.sort_by(f64::total_cmp);
        let mean = if ms.is_empty() {
            0.0
        } else {
            ms.iter().sum::<f64>() / ms.len() as f64
        };
        Latency {
            n: ms.len(),
            p50: pct(&ms, 50.0),
            p99: pct(&ms, 99.0),
            p999: pct(&ms, 99.9),
            max: ms.last().copied().unwrap_or(0.0),
            mean,
        }
    }
}

/// Formats milliseconds for a table: µs below 1 ms, else ms.
pub fn ms(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 1.0 {
        format!("{:.0} µs", v * 1000.0)
    } else if v < 100.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// Formats a rate with thousands separators.
pub fn rate(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_is_one_for_equal_counts_and_one_over_n_for_one_winner() {
        assert!((jain(&[5, 5, 5, 5]) - 1.0).abs() < 1e-12);
        assert!((jain(&[8, 0, 0, 0]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(pct(&v, 50.0), 500.0);
        assert_eq!(pct(&v, 99.0), 990.0);
        assert_eq!(pct(&v, 99.9), 999.0);
        assert_eq!(pct(&v, 100.0), 1000.0);
        assert_eq!(pct(&[], 99.0), 0.0);
    }

    #[test]
    fn rates_get_separators() {
        assert_eq!(rate(1234567.4), "1,234,567");
        assert_eq!(rate(12.0), "12");
    }
}
