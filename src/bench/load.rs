//! A closed-loop HTTP load generator: `concurrency` clients, each sending
//! its next request as soon as the previous one is answered, for a fixed
//! duration. Latencies are kept whole, so percentiles are exact.

use std::time::{Duration, Instant};

use futures::future::join_all;

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub ok: usize,
    pub errors: usize,
    pub elapsed: Duration,
    /// Latencies of successful requests, sorted.
    pub latencies: Vec<Duration>,
}

impl LoadResult {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }
}

/// Builds the `i`-th request of client `client`.
pub trait RequestMaker: Send + Sync {
    fn request(&self, http: &reqwest::Client, client: usize, i: usize) -> reqwest::RequestBuilder;
}

/// Runs `concurrency` clients against `maker` for `duration`.
pub async fn run_load(
    http: &reqwest::Client,
    maker: &dyn RequestMaker,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let start = Instant::now();
    let stop = start + duration;
    let clients = (0..concurrency).map(|client| async move {
        let mut latencies = Vec::new();
        let mut errors = 0;
        let mut i = 0;
        while Instant::now() < stop {
            let sent = Instant::now();
            let response = maker.request(http, client, i).send().await;
            i += 1;
            match response {
                Ok(r) if r.status().is_success() => {
                    // Read the body: the request is done when its answer is.
                    let _ = r.bytes().await;
                    latencies.push(sent.elapsed());
                }
                _ => errors += 1,
            }
        }
        (latencies, errors)
    });
    let results = join_all(clients).await;
    let elapsed = start.elapsed();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut errors = 0;
    for (l, e) in results {
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    LoadResult { ok: latencies.len(), errors, elapsed, latencies }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_exact_ranks() {
        let latencies: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let r = LoadResult { ok: 100, errors: 0, elapsed: Duration::from_secs(2), latencies };
        assert_eq!(r.percentile(50.0), Duration::from_millis(51));
        assert_eq!(r.percentile(99.0), Duration::from_millis(99));
        assert_eq!(r.percentile(100.0), Duration::from_millis(100));
        assert_eq!(r.throughput(), 50.0);
        let empty = LoadResult { ok: 0, errors: 0, elapsed: Duration::from_secs(1), latencies: vec![] };
        assert_eq!(empty.percentile(50.0), Duration::ZERO);
    }
}
