//! Figures of one run: counts, rates, latency percentiles and the per-second series.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles of one operation (an append, a command, a write), in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

impl Latency {
    /// The column headings of the percentiles in a table, in the order of [`Self::cells`].
    const HEADINGS: [&'static str; 6] =
        ["p50 µs", "p90 µs", "p95 µs", "p99 µs", "p99.9 µs", "max µs"];

    /// The percentiles in table order.
    fn cells(&self) -> [u64; 6] {
        [
            self.p50_us,
            self.p90_us,
            self.p95_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
        ]
    }

    /// Ends a table's heading line with the latency columns.
    pub(crate) fn push_headings(out: &mut String) {
        for heading in Self::HEADINGS {
            out.push_str(&format!(" {heading:>9}"));
        }
        out.push('\n');
    }

    /// Ends a table row with these percentiles, under [`Self::push_headings`].
    pub(crate) fn push_cells(&self, out: &mut String) {
        for cell in self.cells() {
            out.push_str(&format!(" {cell:>9}"));
        }
        out.push('\n');
    }

    /// The percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// What one run (of Annals or of the baseline) did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunFigures {
    /// Events (records) written.
    pub events: u64,
    /// Operations (appends, commands, writes) done.
    pub operations: u64,
    /// Wall-clock seconds of the measured part.
    pub seconds: f64,
    /// Events per second.
    pub events_per_second: f64,
    /// Operations per second.
    pub operations_per_second: f64,
    /// Latency of one operation.
    pub latency: Latency,
    /// Rate in the first whole second, events per second.
    pub first_second_events_per_second: f64,
    /// Rate in the last whole second, events per second.
    pub last_second_events_per_second: f64,
}

/// Counts events as writers finish operations and samples the count every second.
#[derive(Clone)]
pub(crate) struct Meter {
    events: Arc<AtomicU64>,
    operations: Arc<AtomicU64>,
    started: Instant,
}

impl Meter {
    pub(crate) fn new() -> Self {
        Self {
            events: Arc::new(AtomicU64::new(0)),
            operations: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        }
    }

    pub(crate) fn record(&self, events: u64) {
        self.events.fetch_add(events, Ordering::Relaxed);
        self.operations.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds another meter's counts (to total several rounds).
    pub(crate) fn add(&self, other: &Meter) {
        self.events.fetch_add(other.events(), Ordering::Relaxed);
        self.operations
            .fetch_add(other.operations(), Ordering::Relaxed);
    }

    pub(crate) fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    pub(crate) fn operations(&self) -> u64 {
        self.operations.load(Ordering::Relaxed)
    }
}

/// Samples a meter every second on a thread of its own (so it works for async and thread
/// writers alike) and prints the progress line; `finish` returns the per-second rates.
pub(crate) struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<f64>>,
}

impl Sampler {
    pub(crate) fn start(meter: &Meter, label: String) -> Self {
        Self::start_counting(meter, label, "events")
    }

    /// Like `start`, naming what the meter counts (`requests`, say) on the progress line.
    pub(crate) fn start_counting(meter: &Meter, label: String, unit: &'static str) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let meter = meter.clone();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut rates = Vec::new();
            let mut last = 0u64;
            let mut next = meter.started + Duration::from_secs(1);
            while !flag.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= next {
                    let events = meter.events();
                    rates.push((events - last) as f64);
                    last = events;
                    next += Duration::from_secs(1);
                    super::progress(&format!(
                        "{label}: {}s, {} {unit}, {} {unit}/s",
                        rates.len(),
                        super::thousands(events as f64),
                        super::thousands(*rates.last().unwrap_or(&0.0))
                    ));
                }
                std::thread::sleep(
                    Duration::from_millis(20).min(next.saturating_duration_since(Instant::now())),
                );
            }
            rates
        });
        Self { stop, handle }
    }

    pub(crate) fn finish(self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// Puts together the figures of a finished run.
pub(crate) fn figures(
    meter: &Meter,
    elapsed: Duration,
    latency: &Histogram<u64>,
    rates: &[f64],
) -> RunFigures {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let events = meter.events();
    let operations = meter.operations();
    RunFigures {
        events,
        operations,
        seconds,
        events_per_second: events as f64 / seconds,
        operations_per_second: operations as f64 / seconds,
        latency: Latency::of(latency),
        first_second_events_per_second: rates.first().copied().unwrap_or(events as f64 / seconds),
        last_second_events_per_second: rates.last().copied().unwrap_or(events as f64 / seconds),
    }
}

/// A histogram of microseconds from 1 µs to 1 hour with 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// Adds one latency sample.
pub(crate) fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    let micros = (elapsed.as_micros() as u64).clamp(1, 3_600_000_000);
    h.saturating_record(micros);
}
