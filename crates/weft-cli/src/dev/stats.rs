//! Golden metrics for `weft dev`: scrapes each proxy's admin `/metrics` and turns the inbound
//! counters and latency histogram into a line per service: requests per second, success rate,
//! p50 and p99.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Cumulative inbound figures of one proxy at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Responses.
    pub total: f64,
    /// Responses classified as failures.
    pub failures: f64,
    /// Histogram buckets: upper bound -> cumulative count.
    pub buckets: BTreeMap<u64, f64>,
}

/// Keeps the previous sample of each proxy to report rates.
pub struct Golden {
    targets: Vec<(String, SocketAddr)>,
    /// Keyed by service and admin address: two proxies of one service count separately.
    last: BTreeMap<(String, SocketAddr), (Instant, Sample)>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Golden {
    pub fn new(targets: Vec<(String, SocketAddr)>) -> Self {
        Self {
            targets,
            last: BTreeMap::new(),
            // A connection per scrape: admin listeners close connections idle for 2 s, shorter
            // than the scrape interval, and a pooled one could be closed as a scrape starts.
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        }
    }

    /// Follows the proxies that run now: services of proxies gone are no longer scraped.
    pub fn set_targets(&mut self, targets: Vec<(String, SocketAddr)>) {
        self.last.retain(|key, _| targets.contains(key));
        self.targets = targets;
    }

    /// Forgets the previous sample of the proxy at `admin`: it stopped, and one started on the
    /// same address counts from zero again.
    pub fn forget(&mut self, admin: SocketAddr) {
        self.last.retain(|(_, a), _| *a != admin);
    }

    /// One line per service.
    pub async fn sample(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for (service, admin) in self.targets.clone() {
            let now = Instant::now();
            let Some(text) = self.scrape(admin).await else {
                lines.push(format!("{service:<10} proxy admin {admin} unreachable"));
                continue;
            };
            let cur = parse(&text);
            let key = (service, admin);
            if let Some((then, prev)) = self.last.get(&key) {
                let secs = now.duration_since(*then).as_secs_f64().max(0.001);
                lines.push(format_line(&key.0, prev, &cur, secs));
            }
            self.last.insert(key, (now, cur));
        }
        lines
    }

    async fn scrape(&self, admin: SocketAddr) -> Option<String> {
        let req = http::Request::get(format!("http://{admin}/metrics"))
            .body(Empty::new())
            .ok()?;
        let rsp = self.client.request(req).await.ok()?;
        let body = rsp.into_body().collect().await.ok()?.to_bytes();
        String::from_utf8(body.to_vec()).ok()
    }
}

/// Formats the change between two samples.
pub fn format_line(service: &str, prev: &Sample, cur: &Sample, secs: f64) -> String {
    let n = (cur.total - prev.total).max(0.0);
    let failed = (cur.failures - prev.failures).max(0.0);
    let rps = n / secs;
    if n == 0.0 {
        return format!("{service:<10} rps {rps:>7.1}  success     -  p50      -  p99      -");
    }
    let success = 100.0 * (n - failed) / n;
    let delta: BTreeMap<u64, f64> = cur
        .buckets
        .iter()
        .map(|(le, c)| (*le, c - prev.buckets.get(le).copied().unwrap_or(0.0)))
        .collect();
    format!(
        "{service:<10} rps {rps:>7.1}  success {success:>5.1}%  p50 {:>6}  p99 {:>6}",
        quantile(&delta, n, 0.50),
        quantile(&delta, n, 0.99)
    )
}

/// The bucket bound under which a share `q` of `n` observations fell.
fn quantile(buckets: &BTreeMap<u64, f64>, n: f64, q: f64) -> String {
    let want = n * q;
    for (le_us, count) in buckets {
        if *count >= want {
            return if *le_us == u64::MAX {
                ">10s".into()
            } else if *le_us < 1000 {
                format!("{le_us}us")
            } else {
                format!("{}ms", le_us / 1000)
            };
        }
    }
    "-".into()
}

/// Sums a proxy's inbound response counters and latency buckets over all label values.
pub fn parse(text: &str) -> Sample {
    let mut s = Sample::default();
    for line in text.lines() {
        if line.starts_with('#') || !line.contains("direction=\"inbound\"") {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if series.starts_with("weft_responses_total{") {
            s.total += value;
            if series.contains("classification=\"failure\"") {
                s.failures += value;
            }
        } else if series.starts_with("weft_response_latency_seconds_bucket{") {
            let Some(le) = label(series, "le") else {
                continue;
            };
            let le_us = if le == "+Inf" {
                u64::MAX
            } else {
                match le.parse::<f64>() {
                    Ok(v) => (v * 1e6).round() as u64,
                    Err(_) => continue,
                }
            };
            *s.buckets.entry(le_us).or_default() += value;
        }
    }
    s
}

fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE weft_responses counter
weft_responses_total{direction="inbound",service="demo/api",peer="a",status_code="200",classification="success"} 90
weft_responses_total{direction="inbound",service="demo/api",peer="a",status_code="503",classification="failure"} 10
weft_responses_total{direction="outbound",service="api.demo",peer="a",status_code="200",classification="success"} 1000
weft_response_latency_seconds_bucket{le="0.001",direction="inbound",service="demo/api",peer="a"} 50
weft_response_latency_seconds_bucket{le="0.002",direction="inbound",service="demo/api",peer="a"} 98
weft_response_latency_seconds_bucket{le="0.005",direction="inbound",service="demo/api",peer="a"} 100
weft_response_latency_seconds_bucket{le="+Inf",direction="inbound",service="demo/api",peer="a"} 100
"#;

    #[test]
    fn golden_line_from_two_scrapes() {
        let cur = parse(TEXT);
        assert_eq!(cur.total, 100.0);
        assert_eq!(cur.failures, 10.0);
        let line = format_line("api", &Sample::default(), &cur, 10.0);
        assert!(line.contains("rps    10.0"), "{line}");
        assert!(line.contains("success  90.0%"), "{line}");
        assert!(
            line.contains("p50  1000us") || line.contains("p50    1ms"),
            "{line}"
        );
        assert!(line.contains("p99    5ms"), "{line}");
    }
}
