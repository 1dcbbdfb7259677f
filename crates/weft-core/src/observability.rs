//! What the mesh file says about seeing traffic: where proxies send their spans, where they
//! start traces, and which workloads log each request (`[observability]`).
//!
//! Proxies always continue a trace a request carries (W3C `traceparent`, B3) once a collector
//! is named; they start one only where `[[observability.tracing.start]]` says, for a share of
//! the requests that carry none. Selection is pure: the control plane asks
//! [`ObservabilitySection::trace_start`], [`ObservabilitySection::route_trace_start`] and
//! [`ObservabilitySection::access_log`] for each proxy and sends the answers in its settings.

use serde::Deserialize;

use crate::model::{Identity, ServiceName, WorkloadKey, check_name};

/// The most spans a proxy may be told to hold for export.
pub const MAX_TRACE_BUFFER: usize = 1 << 20;

/// `[observability]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilitySection {
    /// `[observability.tracing]`.
    #[serde(default)]
    pub tracing: TracingSection,
    /// `[[observability.access_log]]`: the workloads whose proxies log each request.
    #[serde(default)]
    pub access_log: Vec<AccessLogEntry>,
    /// `[observability.tap]`: who may watch requests live.
    #[serde(default)]
    pub tap: TapSection,
}

/// `[observability.tap]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapSection {
    /// SPIFFE IDs that may tap every proxy directly, besides the control plane (which serves
    /// `weft tap` and the dashboard).
    #[serde(default)]
    pub clients: Vec<String>,
}

/// `[observability.tracing]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    /// The OTLP/gRPC collector, `host:port`; absent: proxies record no spans.
    #[serde(default)]
    pub collector: Option<String>,
    /// The SPIFFE ID a collector inside the mesh proves: proxies then export over mutual TLS
    /// and require it. Absent: plaintext HTTP/2.
    #[serde(default)]
    pub collector_identity: Option<String>,
    /// Spans a proxy holds for export; more are dropped and counted. 2,048.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// `[[observability.tracing.start]]`: where proxies start traces.
    #[serde(default)]
    pub start: Vec<TraceStart>,
}

/// Where proxies start traces for requests that carry none, and for what share of them.
///
/// Either workloads (`namespace`, optionally narrowed by `service` or `workload`): their
/// proxies start traces for the calls their application makes and for the requests that
/// reach it without one (an ingress). Or a `route` (`namespace/name` of an HTTP or gRPC
/// route): every caller's proxy starts traces for the requests that match it. A route's share
/// wins over a workload's; among workload entries the first that matches counts.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceStart {
    /// The workloads' namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Only the workloads that serve this service (a name in `namespace`).
    #[serde(default)]
    pub service: Option<String>,
    /// Only this workload instance (pod, allocation, or local workload name).
    #[serde(default)]
    pub workload: Option<String>,
    /// A route, `namespace/name`, instead of workloads.
    #[serde(default)]
    pub route: Option<String>,
    /// The share of requests without a trace context that start one, 0 to 1.
    pub sampling: f64,
}

/// `[[observability.access_log]]`: the workloads whose proxies log every request, and how.
/// The first entry that matches a workload counts. A pod's `weft.dev/access-log` annotation,
/// or the meta key `weft_access_log` of a Nomad job, group or task, wins over the mesh file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogEntry {
    /// The workloads' namespace.
    pub namespace: String,
    /// Only the workloads that serve this service.
    #[serde(default)]
    pub service: Option<String>,
    /// Only this workload instance.
    #[serde(default)]
    pub workload: Option<String>,
    /// `common`, `json` or `off`.
    pub format: AccessLogFormat,
}

/// How a proxy writes its access log (to stderr, one line per request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// No access log.
    #[default]
    Off,
    /// Apache's common log format, with the mesh's fields appended.
    Common,
    /// One JSON object per line.
    Json,
}

impl AccessLogFormat {
    /// Reads `off`, `common` or `json`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "off" => Some(Self::Off),
            "common" => Some(Self::Common),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    /// The word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Common => "common",
            Self::Json => "json",
        }
    }
}

fn default_buffer() -> usize {
    2048
}

impl Default for TracingSection {
    fn default() -> Self {
        Self {
            collector: None,
            collector_identity: None,
            buffer: default_buffer(),
            start: Vec::new(),
        }
    }
}

/// The workload a setting is chosen for: its key and the services it serves.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadView<'a> {
    /// Its namespace and instance name.
    pub key: &'a WorkloadKey,
    /// The services it serves.
    pub services: &'a [ServiceName],
}

fn selects(
    view: WorkloadView<'_>,
    namespace: &str,
    service: Option<&str>,
    workload: Option<&str>,
) -> bool {
    view.key.namespace == namespace
        && workload.is_none_or(|w| view.key.name == w)
        && service.is_none_or(|s| {
            view.services
                .iter()
                .any(|sv| sv.namespace == namespace && sv.name == s)
        })
}

impl ObservabilitySection {
    /// The share of requests without a trace context that `view`'s proxy starts a trace for;
    /// 0 unless an entry says otherwise.
    pub fn trace_start(&self, view: WorkloadView<'_>) -> f64 {
        self.tracing
            .start
            .iter()
            .find(|s| {
                s.route.is_none()
                    && s.namespace.as_deref().is_some_and(|ns| {
                        selects(view, ns, s.service.as_deref(), s.workload.as_deref())
                    })
            })
            .map_or(0.0, |s| s.sampling)
    }

    /// The share callers start traces for among requests that match the route `label`
    /// (`namespace/name`), if an entry names it.
    pub fn route_trace_start(&self, label: &str) -> Option<f64> {
        self.tracing
            .start
            .iter()
            .find(|s| s.route.as_deref() == Some(label))
            .map(|s| s.sampling)
    }

    /// How `view`'s proxy writes its access log.
    pub fn access_log(&self, view: WorkloadView<'_>) -> AccessLogFormat {
        self.access_log
            .iter()
            .find(|e| {
                selects(
                    view,
                    &e.namespace,
                    e.service.as_deref(),
                    e.workload.as_deref(),
                )
            })
            .map_or(AccessLogFormat::Off, |e| e.format)
    }

    /// Checks the section; an error names the key. `warnings` gets entries that have no effect.
    pub fn validate(&self, warnings: &mut Vec<(String, String)>) -> Result<(), (String, String)> {
        let t = &self.tracing;
        if let Some(c) = &t.collector {
            check_host_port(c).map_err(|e| ("observability.tracing.collector".to_string(), e))?;
        }
        if let Some(id) = &t.collector_identity {
            Identity::parse_spiffe(id).map_err(|e| {
                (
                    "observability.tracing.collector_identity".to_string(),
                    e.to_string(),
                )
            })?;
            if t.collector.is_none() {
                return Err((
                    "observability.tracing.collector_identity".into(),
                    "names the collector's identity, but no collector is set".into(),
                ));
            }
        }
        if t.buffer == 0 || t.buffer > MAX_TRACE_BUFFER {
            return Err((
                "observability.tracing.buffer".into(),
                format!("{} is not between 1 and {MAX_TRACE_BUFFER}", t.buffer),
            ));
        }
        for (i, s) in t.start.iter().enumerate() {
            let key = format!("observability.tracing.start[{i}]");
            if !(s.sampling.is_finite() && (0.0..=1.0).contains(&s.sampling)) {
                return Err((
                    format!("{key}.sampling"),
                    format!("{} is not a share between 0 and 1", s.sampling),
                ));
            }
            if let Some(r) = &s.route {
                if s.namespace.is_some() || s.service.is_some() || s.workload.is_some() {
                    return Err((
                        key,
                        "names a route and workloads: give one or the other".into(),
                    ));
                }
                let named = r
                    .split_once('/')
                    .is_some_and(|(ns, name)| check_name(ns).is_ok() && check_name(name).is_ok());
                if !named {
                    return Err((
                        format!("{key}.route"),
                        format!("{r:?} is not namespace/name"),
                    ));
                }
            } else if let Some(ns) = &s.namespace {
                check_names(&key, ns, s.service.as_deref(), s.workload.as_deref())?;
            } else {
                return Err((key, "names neither a namespace nor a route".into()));
            }
            if t.collector.is_none() {
                warnings.push((
                    key,
                    "no observability.tracing.collector is set: no trace is recorded".into(),
                ));
            }
        }
        for (i, c) in self.tap.clients.iter().enumerate() {
            Identity::parse_spiffe(c)
                .map_err(|e| (format!("observability.tap.clients[{i}]"), e.to_string()))?;
        }
        for (i, e) in self.access_log.iter().enumerate() {
            let key = format!("observability.access_log[{i}]");
            check_names(
                &key,
                &e.namespace,
                e.service.as_deref(),
                e.workload.as_deref(),
            )?;
        }
        Ok(())
    }
}

fn check_names(
    key: &str,
    namespace: &str,
    service: Option<&str>,
    workload: Option<&str>,
) -> Result<(), (String, String)> {
    check_name(namespace).map_err(|e| (format!("{key}.namespace"), e.to_string()))?;
    if let Some(s) = service {
        check_name(s).map_err(|e| (format!("{key}.service"), e.to_string()))?;
    }
    if let Some(w) = workload
        && w.is_empty()
    {
        return Err((format!("{key}.workload"), "is empty".into()));
    }
    Ok(())
}

/// `host:port`, with a port above 0 and a host (a name, an IPv4 address or `[IPv6]`).
fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
    if port == 0 || host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{s:?} is not host:port"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!("{s:?}: write an IPv6 address in brackets"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(json: serde_json::Value) -> ObservabilitySection {
        serde_json::from_value(json).expect("parses")
    }

    #[test]
    fn workload_and_route_entries_are_chosen_as_documented() {
        let s = section(serde_json::json!({
            "tracing": {
                "collector": "127.0.0.1:4317",
                "start": [
                    { "namespace": "shop", "service": "web", "sampling": 0.5 },
                    { "namespace": "shop", "sampling": 0.1 },
                    { "route": "shop/checkout", "sampling": 1.0 },
                ],
            },
            "access_log": [{ "namespace": "shop", "workload": "web-1", "format": "json" }],
        }));
        let mut warnings = Vec::new();
        s.validate(&mut warnings).expect("valid");
        assert!(warnings.is_empty());
        let key = WorkloadKey {
            namespace: "shop".into(),
            name: "web-1".into(),
        };
        let web = [ServiceName::new("shop", "web").expect("name")];
        let serving = WorkloadView {
            key: &key,
            services: &web,
        };
        let bare = WorkloadView {
            key: &key,
            services: &[],
        };
        assert_eq!(s.trace_start(serving), 0.5);
        assert_eq!(s.trace_start(bare), 0.1);
        assert_eq!(s.route_trace_start("shop/checkout"), Some(1.0));
        assert_eq!(s.route_trace_start("shop/other"), None);
        assert_eq!(s.access_log(bare), AccessLogFormat::Json);
        let other = WorkloadKey {
            namespace: "shop".into(),
            name: "web-2".into(),
        };
        let elsewhere = WorkloadView {
            key: &other,
            services: &web,
        };
        assert_eq!(s.access_log(elsewhere), AccessLogFormat::Off);
    }

    #[test]
    fn bad_entries_name_their_key() {
        use serde_json::json;
        let cases = [
            (
                json!({"tracing": {"collector": "collector"}}),
                "observability.tracing.collector",
            ),
            (
                json!({"tracing": {"collector": "c:4317", "start": [{"namespace": "a", "sampling": 1.5}]}}),
                "observability.tracing.start[0].sampling",
            ),
            (
                json!({"tracing": {"collector": "c:4317", "start": [{"route": "a/b", "namespace": "a", "sampling": 1}]}}),
                "observability.tracing.start[0]",
            ),
            (
                json!({"tracing": {"collector": "c:4317", "start": [{"route": "b", "sampling": 1}]}}),
                "observability.tracing.start[0].route",
            ),
            (
                json!({"tracing": {"collector": "c:4317", "start": [{"sampling": 1}]}}),
                "observability.tracing.start[0]",
            ),
            (
                json!({"tracing": {"collector_identity": "spiffe://a/ns/b/sa/c"}}),
                "observability.tracing.collector_identity",
            ),
            (
                json!({"tracing": {"buffer": 0}}),
                "observability.tracing.buffer",
            ),
            (
                json!({"access_log": [{"namespace": "Bad_Name", "format": "json"}]}),
                "observability.access_log[0].namespace",
            ),
        ];
        for (value, key) in cases {
            let text = value.to_string();
            let err = section(value)
                .validate(&mut Vec::new())
                .expect_err("refused");
            assert_eq!(err.0, key, "{text}: {}", err.1);
        }
    }

    #[test]
    fn starting_without_a_collector_warns() {
        let mut warnings = Vec::new();
        section(serde_json::json!({"tracing": {"start": [{"namespace": "a", "sampling": 1}]}}))
            .validate(&mut warnings)
            .expect("valid");
        assert_eq!(warnings.len(), 1);
    }
}
