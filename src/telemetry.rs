//! Logging set-up and the Prometheus `/metrics` endpoint.
//!
//! The endpoint is a minimal HTTP/1.1 responder on a listener we bind ourselves, so port 0
//! works (the bound address is logged) and no HTTP server crate is linked in.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Default filter: our info, the libraries' warnings.
/// rumqttd is off: it logs every client that closes without a DISCONNECT as an error, which
/// includes our own readiness probe.
pub const DEFAULT_FILTER: &str = "info,rumqttd=off,rumqttc=warn,tokio_modbus=warn";

/// Log to stderr as key=value lines (journald-friendly), or as one JSON object per line;
/// `RUST_LOG` overrides the filter.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}

/// Upper bounds, in seconds, of the buckets of every duration histogram (`*_seconds`): from a
/// fast Modbus TCP poll or an fsync (sub-millisecond) to an RTU poll through timeouts and
/// retries (tens of seconds). Fixed buckets make each histogram a few hundred bytes, and
/// Prometheus can aggregate them across gateways (Prometheus docs, "Histograms and
/// summaries"). The exporter's default, a rolling summary of three DDSketches with relative
/// accuracy 0.0001, grew to about 250 KB a histogram (heaptrack, ten devices: 2.5 MB of the
/// gateway's 9.4 MB of live heap).
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the histograms' recorded samples are folded into their buckets when nobody
/// scrapes. The exporter keeps every sample recorded since the last fold (8 bytes each, in
/// blocks): at 100,000 QoS 1 values/s the publish-acknowledgement histogram alone gathered
/// 4-7 MB in the 5 s this was before, a saw-tooth in the gateway's resident memory
/// (`bench_e2e --broker sink`, 10 x 1000@0.1). Each fold costs one pass over the histograms.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A duration histogram with the fixed [`DURATION_BUCKETS`], counted where it is recorded:
/// for observations too frequent for the exporter, which keeps every sample until its upkeep
/// folds them in (at 100,000 QoS 1 acknowledgements/s the publish-acknowledgement histogram
/// cost 7 % of the gateway's CPU and 1.4 MB of `RssAnon` that way; `bench_e2e --broker sink`,
/// 10 x 1000@0.1, three alternating runs). `/metrics` renders it beside the exporter's output
/// in the same Prometheus text format (Prometheus docs, "Exposition formats": `_bucket` with
/// cumulative `le` counts up to `+Inf`, `_sum`, `_count`).
#[derive(Debug)]
pub struct FixedHistogram {
    name: &'static str,
    /// Observations per bucket, not cumulative: `counts[i]` took values at most
    /// `DURATION_BUCKETS[i]` and above the bucket before; the last took the rest.
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    sum_ns: AtomicU64,
}

impl FixedHistogram {
    /// An empty histogram exposed as `name` (a Prometheus metric name).
    pub const fn new(name: &'static str) -> FixedHistogram {
        FixedHistogram {
            name,
            counts: [const { AtomicU64::new(0) }; DURATION_BUCKETS.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Count one observation of `d`.
    pub fn record(&self, d: std::time::Duration) {
        let seconds = d.as_secs_f64();
        let i = DURATION_BUCKETS.partition_point(|b| *b < seconds);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Append the histogram in the Prometheus text format (`# TYPE`, the buckets, `_sum`,
    /// `_count`) to `out`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = self.name;
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut total = 0u64;
        for (bound, count) in DURATION_BUCKETS.iter().zip(&self.counts) {
            total += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {total}");
        }
        total += self.counts[DURATION_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// `fieldgate_mqtt_publish_ack_seconds`: time from sending a QoS 1/2 publish to its PUBACK or
/// PUBCOMP, one observation per acknowledgement.
pub static PUBLISH_ACK_SECONDS: FixedHistogram =
    FixedHistogram::new("fieldgate_mqtt_publish_ack_seconds");

/// Install the global metrics recorder (once per process) and return its handle.
fn recorder() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets(&DURATION_BUCKETS) {
                Ok(b) => b,
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Serve `/metrics` on `addr` until `shutdown`; returns the bound address.
pub async fn serve_metrics(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let handle = recorder();
    crate::events::drop_counters_at_zero();
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "metrics listening");
    // Histograms keep their samples until upkeep folds them in: do it on a timer too, so
    // memory stays bounded when nobody scrapes (see [`UPKEEP_EVERY`]).
    let upkeep = handle.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => upkeep.run_upkeep(),
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                () = shutdown.cancelled() => return,
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let mut n = 0;
                // Read the request head (bounded); we only need the request line.
                while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        stream.read(&mut buf[n..]),
                    )
                    .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                        Ok(Ok(k)) => n += k,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if head.starts_with("GET /metrics ") {
                    handle.run_upkeep();
                    let mut body = handle.render();
                    PUBLISH_ACK_SECONDS.render(&mut body);
                    ("200 OK", body)
                } else {
                    ("404 Not Found", "try /metrics\n".to_owned())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Buckets are cumulative and inclusive of their bound (`le`), `+Inf` and `_count` hold
    /// every observation, `_sum` their total in seconds.
    #[test]
    fn a_fixed_histogram_renders_cumulative_buckets_sum_and_count() {
        let h = FixedHistogram::new("t_seconds");
        h.record(Duration::from_micros(500)); // on the first bound: in it
        h.record(Duration::from_micros(501)); // just above: in the second
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(31)); // above every bound
        let mut out = String::new();
        h.render(&mut out);
        let line = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
                .unwrap_or_else(|| panic!("{key} missing in:\n{out}"))
        };
        assert!(out.starts_with("# TYPE t_seconds histogram\n"));
        assert_eq!(line("t_seconds_bucket{le=\"0.0005\"}"), "1");
        assert_eq!(line("t_seconds_bucket{le=\"0.001\"}"), "2");
        assert_eq!(line("t_seconds_bucket{le=\"0.0025\"}"), "2");
        assert_eq!(line("t_seconds_bucket{le=\"0.005\"}"), "3");
        assert_eq!(line("t_seconds_bucket{le=\"30\"}"), "3");
        assert_eq!(line("t_seconds_bucket{le=\"+Inf\"}"), "4");
        assert_eq!(line("t_seconds_count"), "4");
        let sum: f64 = line("t_seconds_sum").parse().unwrap();
        assert!((sum - 31.004001).abs() < 1e-9, "{sum}");
        assert_eq!(
            out.lines().filter(|l| l.contains("_bucket")).count(),
            DURATION_BUCKETS.len() + 1
        );
    }
}
