//! Reporting the proxy's traffic to the control plane: `Telemetry.Report`, one stream over
//! the control-plane connection the proxy already has, with a report every
//! `--report-interval` (5 s). Each report carries the proxy's `weft_*` metrics as its
//! `/metrics` page shows them (cumulative, so a lost report loses nothing), at most
//! [`MAX_SAMPLES`] of them, and where the proxy serves tap. The control plane keeps a short
//! window of them for `weft stat` and the dashboard, so neither needs Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weft_api::v1::telemetry_client::TelemetryClient;
use weft_api::{Label, MetricSample, TelemetryReport};

use crate::Runtime;
use crate::control::ControlError;
use crate::discovery::{StreamEnd, follow_with_backoff};

/// The most samples one report carries (the control plane keeps at most 5,000 series per
/// proxy); the rest wait for the proxy to talk to fewer peers.
pub const MAX_SAMPLES: usize = 5_000;

/// Reports until `stop`.
pub async fn run(
    shared: Arc<Runtime>,
    tap_addr: Option<SocketAddr>,
    every: Duration,
    stop: CancellationToken,
) {
    let shared = &shared;
    follow_with_backoff(shared, &stop, &"telemetry", false, |channel| async move {
        let (tx, rx) = mpsc::channel(1);
        let mut client = TelemetryClient::new(channel);
        let call = client.report(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut sent = 0u64;
        let produce = async {
            loop {
                if tx.send(report(shared, tap_addr)).await.is_err() {
                    return;
                }
                sent += 1;
                tokio::time::sleep(every).await;
            }
        };
        let result = tokio::select! {
            r = call => r.map(|_| ()).map_err(ControlError::from),
            () = produce => Ok(()),
        };
        StreamEnd {
            heard: sent > 1,
            result,
        }
    })
    .await;
}

fn report(shared: &Runtime, tap_addr: Option<SocketAddr>) -> TelemetryReport {
    let mut samples = parse(&shared.metrics.encode());
    samples.truncate(MAX_SAMPLES);
    TelemetryReport {
        workload: format!("{}/{}", shared.config.namespace, shared.config.workload),
        platform: shared.config.platform.clone(),
        tap_addr: tap_addr.map(|a| a.to_string()).unwrap_or_default(),
        samples,
    }
}

/// The `weft_*` samples of an OpenMetrics page (exemplars and comments left out).
pub fn parse(text: &str) -> Vec<MetricSample> {
    text.lines()
        .filter(|l| l.starts_with("weft_"))
        .filter_map(parse_line)
        .collect()
}

/// `name{a="x",b="y"} value [# exemplar]`, or `name value`.
fn parse_line(line: &str) -> Option<MetricSample> {
    let line = line.split(" # ").next()?;
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let value_text = if let Some(mut rest) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                break after;
            }
            rest = rest.strip_prefix(',').unwrap_or(rest);
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.push(Label {
                name: key.to_string(),
                value,
            });
            rest = &after[end + 1..];
        }
    } else {
        rest
    };
    let value: f64 = value_text.split_whitespace().next()?.parse().ok()?;
    Some(MetricSample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_read_as_the_page_writes_them() {
        let page = "# HELP weft_requests HTTP requests\n\
                    weft_requests_total{direction=\"outbound\",service=\"web.test\",peer=\"spiffe://t/ns/a/sa/b\"} 7\n\
                    weft_response_latency_seconds_bucket{direction=\"inbound\",le=\"0.005\"} 3 # {trace_id=\"ab\"} 0.001 1.5\n\
                    weft_inbound_rate_limited_total 2\n\
                    weft_odd{x=\"a \\\"quoted\\\" \\\\ value\"} 1.5\n\
                    other_metric 1\n\
                    # EOF\n";
        let s = parse(page);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "weft_requests_total");
        assert_eq!(s[0].labels[2].value, "spiffe://t/ns/a/sa/b");
        assert_eq!(s[0].value, 7.0);
        assert_eq!(s[1].labels[1].value, "0.005");
        assert_eq!(s[1].value, 3.0, "the exemplar is not the value");
        assert_eq!((s[2].labels.len(), s[2].value), (0, 2.0));
        assert_eq!(s[3].labels[0].value, "a \"quoted\" \\ value");
    }

    #[test]
    fn the_proxys_own_page_parses_whole() {
        let metrics = crate::metrics::Metrics::default();
        metrics.inbound_rate_limited.inc();
        let samples = parse(&metrics.encode());
        assert!(
            samples
                .iter()
                .any(|s| s.name == "weft_inbound_rate_limited_total" && s.value == 1.0)
        );
    }
}
