//! `weft inject`: the sidecar injector's change applied offline to YAML manifests, which are
//! printed again for `kubectl apply -f -`. Kinds without a pod template pass through; each
//! document's outcome is reported on stderr.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Map, Number, Value};
use weft_kubernetes::KubernetesSettings;
use weft_kubernetes::inject::{Injector, Outcome};
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

/// What `weft inject` was asked.
#[derive(Debug)]
pub struct Args {
    /// The manifests, or `-`.
    pub file: PathBuf,
    /// The mesh config file, for its trust domain and injection settings.
    pub config: Option<PathBuf>,
    /// The mesh's roots (PEM).
    pub trust_bundle: PathBuf,
    /// The trust domain when no config file is given.
    pub trust_domain: String,
}

/// Runs `weft inject`: the injected manifests on stdout, a line per document on stderr.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (settings, trust_domain) = match &args.config {
        Some(path) => {
            let cfg = weft_control::platforms::loader()
                .load(path)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let settings = KubernetesSettings::of(&cfg).cloned().unwrap_or_default();
            (settings, cfg.mesh.trust_domain.to_string())
        }
        None => (KubernetesSettings::default(), args.trust_domain.clone()),
    };
    let pem = std::fs::read_to_string(&args.trust_bundle)
        .with_context(|| format!("trust bundle {}", args.trust_bundle.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        bail!(
            "trust bundle {}: no PEM certificate in it",
            args.trust_bundle.display()
        );
    }
    let injector = Injector {
        settings: settings.inject.clone(),
        trust_domain,
        trust_bundle_pem: pem,
        token_audience: settings.token_audience.clone(),
    };
    let text = read_input(&args.file)?;
    let (out, report) = inject_text(&injector, &text, &args.file)?;
    for line in report {
        eprintln!("{line}");
    }
    print!("{out}");
    Ok(())
}

fn read_input(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// Injects every document of `text`: the documents again, and a report line per document.
pub fn inject_text(
    injector: &Injector,
    text: &str,
    file: &Path,
) -> anyhow::Result<(String, Vec<String>)> {
    let docs =
        YamlLoader::load_from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut out = String::new();
    let mut report = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let at = format!("{} document {}", file.display(), i + 1);
        let mut value = to_json(doc).with_context(|| at.clone())?;
        let kind = value["kind"].as_str().unwrap_or("(no kind)").to_string();
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or("(no name)")
            .to_string();
        let outcomes = injector
            .inject_manifest(&mut value)
            .with_context(|| format!("{at} ({kind} {name})"))?;
        for o in outcomes {
            let what = match o {
                Outcome::Injected => "injected".to_string(),
                Outcome::Skipped(why) => format!("skipped: {why}"),
                Outcome::PassedThrough => "passed through (no pod template)".to_string(),
            };
            report.push(format!("{kind}/{name}: {what}"));
        }
        let mut emitted = String::new();
        let mut emitter = YamlEmitter::new(&mut emitted);
        emitter.multiline_strings(true);
        emitter
            .dump(&to_yaml(&value))
            .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        // The emitter starts each document with `---`.
        out.push_str(&emitted);
        out.push('\n');
    }
    Ok((out, report))
}

/// A YAML document as JSON; keys must be strings, as Kubernetes objects have them.
pub(crate) fn to_json(y: &Yaml) -> anyhow::Result<Value> {
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::Number((*i).into()),
        Yaml::Real(r) => {
            let f: f64 = r.parse().with_context(|| format!("bad number {r}"))?;
            Value::Number(Number::from_f64(f).with_context(|| format!("bad number {r}"))?)
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => bail!("a mapping key that is not a string: {other:?}"),
                };
                m.insert(key, to_json(v)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => bail!("a value that is not plain YAML"),
    })
}

pub(crate) fn to_yaml(v: &Value) -> Yaml {
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(a) => Yaml::Array(a.iter().map(to_yaml).collect()),
        Value::Object(o) => {
            let mut h = Hash::new();
            for (k, v) in o {
                h.insert(Yaml::String(k.clone()), to_yaml(v));
            }
            Yaml::Hash(h)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injector() -> Injector {
        Injector {
            settings: Default::default(),
            trust_domain: "weft.test".into(),
            trust_bundle_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                .into(),
            token_audience: "weft".into(),
        }
    }

    #[test]
    fn every_document_is_printed_and_reported() {
        let text = "\
# a comment
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: 80
    targetPort: http
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: web:1
        ports:
        - containerPort: 8080
          name: http
        env:
        - {name: RATIO, value: \"0.5\"}
        - {name: ENABLED, value: \"true\"}
";
        let (out, report) = inject_text(&injector(), text, Path::new("app.yaml")).unwrap();
        assert_eq!(
            report,
            [
                "Service/web: passed through (no pod template)",
                "Deployment/web: injected"
            ]
        );
        let docs = YamlLoader::load_from_str(&out).unwrap();
        assert_eq!(docs.len(), 2);
        let deploy = to_json(&docs[1]).unwrap();
        let spec = &deploy["spec"]["template"]["spec"];
        assert_eq!(spec["initContainers"][1]["name"], "weft-proxy");
        // Strings that look like other types stay strings; numbers stay numbers.
        assert_eq!(spec["containers"][0]["env"][0]["value"], "0.5");
        assert_eq!(spec["containers"][0]["env"][1]["value"], "true");
        assert_eq!(spec["containers"][0]["ports"][0]["containerPort"], 8080);
        // The PEM bundle survives the round trip.
        let proxy = &spec["initContainers"][1];
        let pem = proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "WEFT_PROXY_TRUST_BUNDLE_PEM")
            .unwrap();
        assert_eq!(pem["value"], injector().trust_bundle_pem);
        assert_eq!(
            to_json(&docs[0]).unwrap()["spec"]["ports"][0]["targetPort"],
            "http"
        );
    }

    #[test]
    fn a_bad_document_is_named() {
        let text = "kind: Pod\nmetadata: {name: p, annotations: {weft.dev/inject: maybe}}\nspec: {containers: [{name: a}]}\n";
        let err = inject_text(&injector(), text, Path::new("p.yaml")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("p.yaml document 1 (Pod p)"), "{msg}");
        assert!(msg.contains("weft.dev/inject"), "{msg}");
        let err = inject_text(&injector(), "a: [1, 2\n", Path::new("broken.yaml")).unwrap_err();
        assert!(format!("{err:#}").contains("broken.yaml"), "{err:#}");
    }
}
