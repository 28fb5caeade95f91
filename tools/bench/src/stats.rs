//! Repeated timings and their summary.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Seconds taken by each of several runs of the same thing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Timings {
    pub(crate) seconds: Vec<f64>,
}

impl Timings {
    pub(crate) fn median(&self) -> f64 {
        median(&self.seconds)
    }

    pub(crate) fn min(&self) -> f64 {
        self.seconds.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub(crate) fn max(&self) -> f64 {
        self.seconds.iter().copied().fold(0.0, f64::max)
    }

    /// Median, fastest and slowest, as table cells.
    pub(crate) fn cells(&self) -> [String; 3] {
        [self.median(), self.min(), self.max()].map(|s| format!("{s:.3} s"))
    }
}

/// Runs `f` `runs` times and records how long each took.
pub(crate) fn measure(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Timings> {
    let mut seconds = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    Ok(Timings { seconds })
}

/// The async counterpart of [`measure`].
pub(crate) async fn measure_async<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<Timings>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Duration>>,
{
    let mut seconds = Vec::with_capacity(runs);
    for i in 0..runs {
        seconds.push(f(i).await?.as_secs_f64());
    }
    Ok(Timings { seconds })
}

/// The median (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        let t = Timings { seconds: vec![2.0, 5.0, 1.0] };
        assert_eq!((t.min(), t.median(), t.max()), (1.0, 2.0, 5.0));
    }
}
