//! `weft inject`: the sidecar injector's change applied offline to YAML manifests, which are
//! printed again for `kubectl apply -f -`. Kinds without a pod template pass through; each
//! document's outcome is reported on stderr. YAML anchors and aliases are refused with their
//! place before the manifests are loaded ([`load_yaml`], which `weft install` uses too). With `--platform nomad`, a Nomad job spec instead
//! (`crate::inject_nomad`).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Map, Number, Value};
use weft_kubernetes::KubernetesSettings;
use weft_kubernetes::inject::{Injector, Outcome};
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

/// The platforms `weft inject` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Platform {
    /// Kubernetes manifests (YAML).
    Kubernetes,
    /// A Nomad job spec (HCL).
    Nomad,
}

/// What `weft inject` was asked.
#[derive(Debug)]
pub struct Args {
    /// The manifests or job spec, or `-`.
    pub file: PathBuf,
    /// Which platform's files.
    pub platform: Platform,
    /// The mesh config file, for its trust domain and injection settings.
    pub config: Option<PathBuf>,
    /// The mesh's roots (PEM); Kubernetes only.
    pub trust_bundle: Option<PathBuf>,
    /// The trust domain when no config file is given.
    pub trust_domain: String,
    /// Nomad: explicit mode instead of transparent interception.
    pub explicit: bool,
    /// Nomad, explicit mode: the upstreams (`service=127.0.0.1:port`).
    pub upstreams: Vec<String>,
    /// Nomad: only the groups with a service of these names.
    pub services: Vec<String>,
    /// Nomad: the proxy image.
    pub proxy_image: Option<String>,
}

/// Runs `weft inject`: the injected manifests on stdout, a line per document on stderr.
pub fn run(args: &Args) -> anyhow::Result<()> {
    match args.platform {
        Platform::Kubernetes => run_kubernetes(args),
        Platform::Nomad => run_nomad(args),
    }
}

/// `weft inject --platform nomad`: the job on stdout, a line per group on stderr.
fn run_nomad(args: &Args) -> anyhow::Result<()> {
    if args.trust_bundle.is_some() {
        bail!(
            "--trust-bundle is not used with --platform nomad: proxies read the roots from the Nomad Variable nomad/jobs (key weft_trust_bundle)"
        );
    }
    let trust_domain = match &args.config {
        Some(path) => weft_control::platforms::loader()
            .load(path)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .mesh
            .trust_domain
            .to_string(),
        None => args.trust_domain.clone(),
    };
    let mut opts = crate::inject_nomad::Options::new(trust_domain);
    opts.explicit = args.explicit;
    opts.upstreams.clone_from(&args.upstreams);
    opts.services.clone_from(&args.services);
    if let Some(image) = &args.proxy_image {
        opts.proxy_image.clone_from(image);
    }
    let text = read_input(&args.file)?;
    let name = if args.file == Path::new("-") {
        "<stdin>".to_string()
    } else {
        args.file.display().to_string()
    };
    let injected = crate::inject_nomad::inject(&text, &name, &opts)?;
    for line in &injected.report {
        eprintln!("{line}");
    }
    print!("{}", injected.text);
    Ok(())
}

fn run_kubernetes(args: &Args) -> anyhow::Result<()> {
    if args.explicit
        || !args.upstreams.is_empty()
        || !args.services.is_empty()
        || args.proxy_image.is_some()
    {
        bail!(
            "--explicit, --upstream, --service and --proxy-image are for --platform nomad; on Kubernetes the mesh config file's [platforms.kubernetes.inject] settles what injection adds"
        );
    }
    let Some(trust_bundle) = &args.trust_bundle else {
        bail!(
            "--trust-bundle is required with --platform kubernetes: the roots go into each injected pod"
        );
    };
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
    let pem = std::fs::read_to_string(trust_bundle)
        .with_context(|| format!("trust bundle {}", trust_bundle.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        bail!(
            "trust bundle {}: no PEM certificate in it",
            trust_bundle.display()
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
    let docs = load_yaml(text, file)?;
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
        // The emitter can write what no YAML reader takes back (a key whose escaped form
        // passes the 1024 characters of an implicit key): print only what reads back as the
        // same manifest.
        let reads_back = YamlLoader::load_from_str(&emitted)
            .map_err(|e| e.to_string())
            .and_then(|docs| match docs.as_slice() {
                [doc] => to_json(doc).map_err(|e| e.to_string()),
                _ => Err("not one document".to_string()),
            })
            .and_then(|back| {
                if back == value {
                    Ok(())
                } else {
                    Err("it reads as another manifest".to_string())
                }
            });
        if let Err(why) = reads_back {
            bail!("{at} ({kind} {name}): the injected manifest does not read back as YAML ({why})");
        }
        // The emitter starts each document with `---`.
        out.push_str(&emitted);
        out.push('\n');
    }
    Ok((out, report))
}

/// The documents of a YAML text read from `file`, which a user may have been handed: anchors
/// and aliases are refused with their place before the loader could expand them
/// ([`weft_core::config::refuse_yaml_anchors`]). Every YAML file the CLI reads comes through
/// here.
pub(crate) fn load_yaml(text: &str, file: &Path) -> anyhow::Result<Vec<Yaml>> {
    weft_core::config::refuse_yaml_anchors(text, file)?;
    YamlLoader::load_from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
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
    fn what_cannot_be_printed_back_is_refused() {
        // Control characters are escaped when printed (`\u000f`: six characters each), so
        // this key grows past the 1024 characters YAML allows an implicit key: the printed
        // manifest would not read again. Found by the inject_kubernetes fuzz target.
        let key = "\\x0f".repeat(300);
        let text = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{\"{key}\": x}}\n"
        );
        match inject_text(&injector(), &text, Path::new("c.yaml")) {
            Ok((out, _)) => {
                let again = inject_text(&injector(), &out, Path::new("c.yaml"));
                assert!(again.is_ok(), "printed what does not read back:\n{out}");
            }
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(msg.contains("c.yaml document 1"), "{msg}");
                assert!(msg.contains("does not read back"), "{msg}");
            }
        }
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
