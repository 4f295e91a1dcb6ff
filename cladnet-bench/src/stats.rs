//! Latency statistics: nearest-rank percentiles and a summary of a sample.

use std::time::Duration;

use serde::Serialize;

/// The `p`-th percentile (0 < `p` <= 100) of an ascending `sorted` sample, by the
/// nearest-rank method: the smallest value such that at least `p` % of the sample is less than
/// or equal to it. `None` for an empty sample.
///
/// `p` is clamped to `0..=100`; `p = 0` gives the minimum.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // Rank in 1..=n (the float is small and non-negative).
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median of a sample of numbers (mean of the two middle values for an even count).
/// `None` for an empty sample. NaNs sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    })
}

/// Summary of a latency sample, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of values.
    pub count: usize,
    /// Smallest value.
    pub min_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// 50th percentile (nearest rank).
    pub p50_ms: f64,
    /// 90th percentile (nearest rank).
    pub p90_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

impl Summary {
    /// Summarizes `sample` (sorted in place). `None` for an empty sample.
    pub fn of(sample: &mut [Duration]) -> Option<Self> {
        sample.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let total: Duration = sample.iter().sum();
        let mean_ms = ms(total) / sample.len().max(1) as f64;
        Some(Self {
            count: sample.len(),
            min_ms: ms(*sample.first()?),
            mean_ms,
            p50_ms: ms(percentile(sample, 50.0)?),
            p90_ms: ms(percentile(sample, 90.0)?),
            p99_ms: ms(percentile(sample, 99.0)?),
            max_ms: ms(*sample.last()?),
        })
    }

    /// The per-field median of several summaries (each field on its own), e.g. over repeated
    /// runs. `None` if `summaries` is empty.
    pub fn median_of(summaries: &[Self]) -> Option<Self> {
        let field = |f: fn(&Self) -> f64| median(&summaries.iter().map(f).collect::<Vec<_>>());
        let counts: Vec<f64> = summaries.iter().map(|s| s.count as f64).collect();
        let count = median(&counts)? as usize;
        Some(Self {
            count,
            min_ms: field(|s| s.min_ms)?,
            mean_ms: field(|s| s.mean_ms)?,
            p50_ms: field(|s| s.p50_ms)?,
            p90_ms: field(|s| s.p90_ms)?,
            p99_ms: field(|s| s.p99_ms)?,
            max_ms: field(|s| s.max_ms)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Summary, median, percentile};

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentile_of_empty_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(Summary::of(&mut []), None);
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn percentile_single_value() {
        for p in [0.0, 1.0, 50.0, 99.0, 100.0] {
            assert_eq!(percentile(&[ms(7)], p), Some(ms(7)));
        }
    }

    #[test]
    fn percentile_nearest_rank() {
        // 1..=100 ms: the p-th percentile is exactly p ms.
        let sample: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sample, 50.0), Some(ms(50)));
        assert_eq!(percentile(&sample, 99.0), Some(ms(99)));
        assert_eq!(percentile(&sample, 100.0), Some(ms(100)));
        assert_eq!(percentile(&sample, 0.0), Some(ms(1)));
        assert_eq!(percentile(&sample, 0.5), Some(ms(1)));
        assert_eq!(percentile(&sample, 99.1), Some(ms(100)));
        // Out-of-range p is clamped.
        assert_eq!(percentile(&sample, 250.0), Some(ms(100)));
        assert_eq!(percentile(&sample, -3.0), Some(ms(1)));
    }

    #[test]
    fn percentile_small_sample_rounds_up() {
        // Wikipedia's nearest-rank example: 15, 20, 35, 40, 50.
        let sample = [ms(15), ms(20), ms(35), ms(40), ms(50)];
        assert_eq!(percentile(&sample, 5.0), Some(ms(15)));
        assert_eq!(percentile(&sample, 30.0), Some(ms(20)));
        assert_eq!(percentile(&sample, 40.0), Some(ms(20)));
        assert_eq!(percentile(&sample, 50.0), Some(ms(35)));
        assert_eq!(percentile(&sample, 100.0), Some(ms(50)));
    }

    #[test]
    fn p99_sees_the_tail() {
        // 990 fast values and 10 slow ones: p99 is still fast, the max is slow; one more slow
        // value pushes p99 into the tail.
        let mut sample: Vec<Duration> = std::iter::repeat_n(ms(1), 990)
            .chain(std::iter::repeat_n(ms(900), 10))
            .collect();
        let s = Summary::of(&mut sample).unwrap();
        assert_eq!((s.p99_ms, s.max_ms), (1.0, 900.0));
        sample.push(ms(900));
        let s = Summary::of(&mut sample).unwrap();
        assert_eq!(s.p99_ms, 900.0);
    }

    #[test]
    fn summary_sorts_and_averages() {
        let mut sample = vec![ms(30), ms(10), ms(20), ms(40)];
        let s = Summary::of(&mut sample).unwrap();
        assert_eq!(sample, vec![ms(10), ms(20), ms(30), ms(40)]);
        assert_eq!(s.count, 4);
        assert_eq!(s.min_ms, 10.0);
        assert_eq!(s.max_ms, 40.0);
        assert_eq!(s.p50_ms, 20.0);
        assert!((s.mean_ms - 25.0).abs() < 1e-9);
    }

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn median_of_summaries_is_per_field() {
        let a = Summary::of(&mut [ms(1), ms(10)]).unwrap();
        let b = Summary::of(&mut [ms(2), ms(20)]).unwrap();
        let c = Summary::of(&mut [ms(3), ms(5)]).unwrap();
        let m = Summary::median_of(&[a, b, c]).unwrap();
        assert_eq!(m.min_ms, 2.0);
        assert_eq!(m.max_ms, 10.0);
        assert_eq!(m.count, 2);
        assert_eq!(Summary::median_of(&[]), None);
    }
}
