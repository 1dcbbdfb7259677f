//! Authorization rules as users write them: the same serde types read a rule of the mesh
//! file's `[[policy.authorizations]]` (snake_case) and the spec of a Kubernetes
//! `AuthorizationPolicy` (`weft.dev/v1alpha1`, camelCase), key for key.
//! [`AuthorizationSpec::compile`] checks one and builds the model of [`super::authz`]; an
//! error names the key (`to[1].path.value`) for the caller to place in its file or object.

use serde::Deserialize;

use super::authz::{Action, AuthorizationRule, IdentityMatch, PatternError, RequestMatch};
use super::route::RouteSource;
use super::route_spec::{
    GrpcMatchSpec, GrpcMethodSpec, HttpMatchSpec, PathMatchSpec, RouteSpecError, ValueMatchSpec,
    err, grpc_match, http_match,
};
use crate::model::ServiceName;

/// Whether a rule is enforced or only tried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Enforced.
    #[default]
    Enforce,
    /// Tried: what it would refuse is admitted, logged and counted with the rule's name.
    Audit,
}

/// One authorization rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationSpec {
    /// The service it protects: `name` (in the rule's namespace) or `name.namespace`.
    pub service: String,
    /// `allow` (the default) or `deny`.
    #[serde(default)]
    pub action: Action,
    /// `enforce` (the default) or `audit`.
    #[serde(default)]
    pub mode: Mode,
    /// The clients it applies to: identity patterns. Absent: every mesh identity for an
    /// allow rule, every client (plaintext included) for a deny rule.
    #[serde(default)]
    pub from: Option<Vec<String>>,
    /// The older spelling of `from` for an allow rule.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// The requests it applies to (any of them); absent: every request.
    #[serde(default)]
    pub to: Vec<RequestMatchSpec>,
}

/// What a request must be for a rule to apply: every key given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMatchSpec {
    /// The port the workload serves on.
    #[serde(default)]
    pub port: Option<u16>,
    /// The path, as in an HTTPRoute match.
    #[serde(default)]
    pub path: Option<PathMatchSpec>,
    /// The method.
    #[serde(default)]
    pub method: Option<String>,
    /// Headers, as in an HTTPRoute match.
    #[serde(default)]
    pub headers: Vec<ValueMatchSpec>,
    /// gRPC service and method, as in a GRPCRoute match's `method`.
    #[serde(default)]
    pub grpc: Option<GrpcMethodSpec>,
}

impl AuthorizationSpec {
    /// Checks the rule `name` (`namespace/name`) written at `source` and builds it; a
    /// service without a namespace is in `namespace`.
    pub fn compile(
        &self,
        name: String,
        source: RouteSource,
        namespace: &str,
    ) -> Result<AuthorizationRule, RouteSpecError> {
        let service = ServiceName::parse(&self.service, namespace)
            .or_else(|e| err("service", e.to_string()))?;
        let (key, patterns) = match (&self.from, &self.allow) {
            (Some(_), Some(_)) => return err("allow", "write the clients once, in from"),
            (None, Some(_)) if self.action == Action::Deny => {
                return err("allow", "a deny rule names its clients in from");
            }
            (Some(from), None) => ("from", Some(from)),
            (None, Some(allow)) => ("allow", Some(allow)),
            (None, None) => ("from", None),
        };
        let from = match patterns {
            Some(list) if list.is_empty() => {
                return err(key, "empty: name clients, or leave the key out");
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    p.parse::<IdentityMatch>()
                        .map_err(|e: PatternError| RouteSpecError {
                            key: format!("{key}[{i}]"),
                            message: e.to_string(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None if self.action == Action::Deny => vec![IdentityMatch::Unauthenticated],
            None => vec![IdentityMatch::Any],
        };
        let to = compile_matches(&self.to)?;
        Ok(AuthorizationRule {
            name,
            source,
            service,
            action: self.action,
            audit: self.mode == Mode::Audit,
            from,
            to,
        })
    }
}

/// Checks the request matches of a rule or limit (`to`) and builds them.
pub(crate) fn compile_matches(
    specs: &[RequestMatchSpec],
) -> Result<Vec<RequestMatch>, RouteSpecError> {
    specs
        .iter()
        .enumerate()
        .map(|(i, m)| m.compile(&format!("to[{i}]")))
        .collect()
}

impl RequestMatchSpec {
    /// Checks the match found at `key` and builds it.
    fn compile(&self, key: &str) -> Result<RequestMatch, RouteSpecError> {
        if self.port == Some(0) {
            return err(format!("{key}.port"), "a port from 1 to 65535");
        }
        let http = (self.path.is_some() || self.method.is_some() || !self.headers.is_empty())
            .then(|| {
                http_match(
                    key,
                    &HttpMatchSpec {
                        path: self.path.clone(),
                        headers: self.headers.clone(),
                        query_params: Vec::new(),
                        method: self.method.clone(),
                    },
                )
            })
            .transpose()?;
        let grpc = self
            .grpc
            .as_ref()
            .map(|g| {
                let m = grpc_match(
                    key,
                    &GrpcMatchSpec {
                        method: Some(g.clone()),
                        headers: Vec::new(),
                    },
                );
                // Its keys are `grpc.*` here, `method.*` in a GRPCRoute.
                m.map_err(|e| RouteSpecError {
                    key: e
                        .key
                        .replacen(&format!("{key}.method"), &format!("{key}.grpc"), 1),
                    message: e.message,
                })
            })
            .transpose()?;
        Ok(RequestMatch {
            port: self.port,
            http,
            grpc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::route::PathMatch;

    fn compile(json: serde_json::Value) -> Result<AuthorizationRule, RouteSpecError> {
        let spec: AuthorizationSpec = serde_json::from_value(json).unwrap();
        spec.compile("shop/r".into(), RouteSource::ControlPlane, "shop")
    }

    /// The keys of a Kubernetes object read as the mesh file's.
    #[test]
    fn a_rule_compiles_with_its_defaults() {
        let r = compile(serde_json::json!({
            "service": "api",
            "action": "deny",
            "mode": "audit",
            "to": [{"port": 8080, "path": {"type": "PathPrefix", "value": "/admin/"}, "method": "POST"},
                   {"grpc": {"service": "shop.Catalog", "method": "Delete"}}]
        }))
        .unwrap();
        assert_eq!(r.service, ServiceName::new("shop", "api").unwrap());
        assert_eq!((r.action, r.audit), (Action::Deny, true));
        assert_eq!(r.from, vec![IdentityMatch::Unauthenticated]);
        let http = r.to[0].http.as_ref().unwrap();
        assert_eq!(http.path, Some(PathMatch::prefix("/admin")));
        assert_eq!(http.method.as_deref(), Some("POST"));
        assert_eq!(r.to[0].port, Some(8080));
        assert!(r.to[1].grpc.is_some() && r.to[1].http.is_none());
        let r =
            compile(serde_json::json!({"service": "api.other", "allow": ["shop/web"]})).unwrap();
        assert_eq!((r.action, r.audit), (Action::Allow, false));
        assert_eq!(r.service.namespace, "other");
        let r = compile(serde_json::json!({"service": "api"})).unwrap();
        assert_eq!(r.from, vec![IdentityMatch::Any]);
    }

    #[test]
    fn errors_name_the_key() {
        for (json, key) in [
            (serde_json::json!({"service": "API"}), "service"),
            (serde_json::json!({"service": "api", "from": []}), "from"),
            (
                serde_json::json!({"service": "api", "from": ["x"]}),
                "from[0]",
            ),
            (
                serde_json::json!({"service": "api", "from": ["*"], "allow": ["*"]}),
                "allow",
            ),
            (
                serde_json::json!({"service": "api", "action": "deny", "allow": ["*"]}),
                "allow",
            ),
            (
                serde_json::json!({"service": "api", "to": [{}, {"port": 0}]}),
                "to[1].port",
            ),
            (
                serde_json::json!({"service": "api", "to": [{"path": {"value": "x"}}]}),
                "to[0].path.value",
            ),
            (
                serde_json::json!({"service": "api", "to": [{"method": "get"}]}),
                "to[0].method",
            ),
            (
                serde_json::json!({"service": "api", "to": [{"grpc": {}}]}),
                "to[0].grpc",
            ),
            (
                serde_json::json!({"service": "api", "to": [{"grpc": {"service": "(", "type": "RegularExpression"}}]}),
                "to[0].grpc.service.value",
            ),
        ] {
            let e = compile(json.clone()).unwrap_err();
            assert_eq!(e.key, key, "{json}: {e}");
        }
        let unknown: Result<AuthorizationSpec, _> =
            serde_json::from_value(serde_json::json!({"service": "api", "when": []}));
        assert!(unknown.is_err());
    }
}
