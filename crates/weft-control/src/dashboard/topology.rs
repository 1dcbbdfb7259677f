//! The topology graph across platforms: the workloads that report or serve as endpoints, the
//! services without a proxy and the clients outside the mesh that traffic names, and who calls
//! whom ([`crate::stats::edges`]), laid out on the server and drawn as SVG.
//!
//! The layout is deterministic: one band of columns per namespace, in name order; within a
//! band, a column per call depth (those no one calls first, then whom they call, and so on,
//! at most [`MAX_DEPTH`] columns), at most [`ROWS_PER_COLUMN`] nodes a column, by name. At most
//! [`MAX_NODES`] nodes are drawn, those with the most traffic first; the view says how many
//! were left out. Edges are coloured by success rate: at least 99 % good, at least 95 % fair,
//! below that poor, none without responses.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use weft_core::RegistrySnapshot;

use super::views::{EdgeCells, Health, service_link};
use crate::State;
use crate::stats::EdgeRow;
use crate::telemetry::ProxyView;

/// Nodes drawn at most.
pub const MAX_NODES: usize = 200;
/// Nodes in one column at most.
pub const ROWS_PER_COLUMN: usize = 12;
/// Columns of call depth a namespace's band has at most.
pub const MAX_DEPTH: usize = 6;
/// Rows of the table of edges at most.
pub const MAX_EDGE_ROWS: usize = 500;

const MARGIN: i64 = 24;
/// Room above the first row for the namespaces' names.
const TOP: i64 = 56;
const COLUMN_WIDTH: i64 = 280;
const ROW_HEIGHT: i64 = 72;
/// A node's box.
const NODE_WIDTH: i64 = 200;
const NODE_HEIGHT: i64 = 46;
/// Characters of a label drawn at most.
const LABEL_CHARS: usize = 26;

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeKind {
    /// A workload: one that reports, or an endpoint of a service.
    Workload,
    /// A service whose callers reach it without a proxy in front of it.
    Service,
    /// A client known only by its identity (or none).
    Client,
}

// === impl NodeKind ===

impl NodeKind {
    /// The CSS class.
    pub(crate) fn class(self) -> &'static str {
        match self {
            NodeKind::Workload => "workload",
            NodeKind::Service => "service",
            NodeKind::Client => "client",
        }
    }
}

/// A node before layout.
#[derive(Clone, Debug, PartialEq)]
struct Candidate {
    namespace: String,
    label: String,
    platform: String,
    kind: NodeKind,
    link: String,
    traffic: u64,
}

/// A node chosen to be drawn: its key and what it is.
type Ranked<'a> = (&'a String, &'a Candidate);

/// A node, placed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    /// Its key: a workload `namespace/name`, a service `name.namespace`, or an identity.
    pub(crate) id: String,
    /// Its label, cut to fit.
    pub(crate) label: String,
    /// Its second line: the platform, and what it is unless a workload.
    pub(crate) detail: String,
    /// What it is.
    pub(crate) kind: NodeKind,
    /// The page of the service it serves, or empty.
    pub(crate) link: String,
    /// Its box's top left corner.
    pub(crate) x: i64,
    /// See `x`.
    pub(crate) y: i64,
    /// Where its label goes.
    pub(crate) text_x: i64,
    /// The baselines of its two lines.
    pub(crate) text_y: i64,
    /// See `text_y`.
    pub(crate) detail_y: i64,
}

/// An edge, drawn.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Edge {
    /// The SVG path.
    pub(crate) path: String,
    /// How healthy its calls are.
    pub(crate) health: Health,
    /// What it is, in words (its tooltip).
    pub(crate) title: String,
}

/// A namespace's name above its columns.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Band {
    /// The namespace.
    pub(crate) name: String,
    /// Where its name goes.
    pub(crate) x: i64,
}

/// The topology view.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Topology {
    /// The drawing's size.
    pub(crate) width: i64,
    /// See `width`.
    pub(crate) height: i64,
    /// A node's box.
    pub(crate) node_width: i64,
    /// See `node_width`.
    pub(crate) node_height: i64,
    /// The namespaces.
    pub(crate) bands: Vec<Band>,
    /// The nodes drawn.
    pub(crate) nodes: Vec<Node>,
    /// The edges between them.
    pub(crate) edges: Vec<Edge>,
    /// Nodes known, drawn or not.
    pub(crate) total_nodes: usize,
    /// Nodes left out.
    pub(crate) hidden_nodes: usize,
    /// Edges left out with them.
    pub(crate) hidden_edges: usize,
    /// Every edge as a table row (at most [`MAX_EDGE_ROWS`]).
    pub(crate) table: Vec<EdgeCells>,
    /// Edges the table leaves out.
    pub(crate) table_hidden: usize,
}

/// The topology view of the mesh now.
pub(crate) fn topology(state: &State) -> Topology {
    let proxies = state.telemetry.proxies();
    let registry = state.registry.snapshot();
    let edges = crate::stats::edges(&proxies, None, None);
    layout(nodes_of(&proxies, &registry), &edges)
}

/// The namespace of a node's key.
fn namespace_of(id: &str) -> String {
    if let Some(rest) = id.strip_prefix("spiffe://") {
        // spiffe://<td>/ns/<namespace>/sa/<name>
        return rest.split('/').nth(2).unwrap_or("-").to_string();
    }
    if let Some((ns, _)) = id.split_once('/') {
        return ns.to_string();
    }
    match id.rsplit_once('.') {
        Some((_, ns)) => ns.to_string(),
        None => "-".to_string(),
    }
}

/// The workloads that report and those that are endpoints, by `namespace/name`.
fn nodes_of(proxies: &[ProxyView], registry: &RegistrySnapshot) -> BTreeMap<String, Candidate> {
    let mut nodes: BTreeMap<String, Candidate> = BTreeMap::new();
    for source in registry.sources() {
        for service in registry.source(source) {
            for e in service.ports.iter().flat_map(|p| &p.endpoints) {
                let Some(w) = &e.workload else { continue };
                nodes.entry(w.to_string()).or_insert_with(|| Candidate {
                    namespace: w.namespace.clone(),
                    label: w.name.clone(),
                    platform: source.to_string(),
                    kind: NodeKind::Workload,
                    link: service_link(&service.name.to_string()),
                    traffic: 0,
                });
            }
        }
    }
    for p in proxies {
        nodes
            .entry(p.workload.clone())
            .or_insert_with(|| Candidate {
                namespace: namespace_of(&p.workload),
                label: p
                    .workload
                    .split_once('/')
                    .map_or(p.workload.clone(), |(_, n)| n.to_string()),
                platform: p.platform.clone(),
                kind: NodeKind::Workload,
                link: String::new(),
                traffic: 0,
            })
            .platform
            .clone_from(&p.platform);
    }
    nodes
}

/// `s` cut to [`LABEL_CHARS`] characters.
fn fit(s: &str) -> String {
    if s.chars().count() <= LABEL_CHARS {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(LABEL_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Places `nodes` and the nodes `edges` name besides, and draws the edges between them.
fn layout(mut nodes: BTreeMap<String, Candidate>, edges: &[EdgeRow]) -> Topology {
    // Each edge from each workload holding the client identity (or from the identity itself
    // where none reports) to its destination.
    let mut lines: Vec<(String, String, &EdgeRow)> = Vec::new();
    for e in edges {
        let to = e.to.clone();
        nodes.entry(to.clone()).or_insert_with(|| Candidate {
            namespace: namespace_of(&to),
            label: to.clone(),
            platform: String::new(),
            kind: NodeKind::Service,
            link: service_link(&to),
            traffic: 0,
        });
        let from: Vec<String> = if e.from_workloads.is_empty() {
            let id = e.from.clone();
            nodes.entry(id.clone()).or_insert_with(|| Candidate {
                namespace: if id == "-" {
                    "outside the mesh".into()
                } else {
                    namespace_of(&id)
                },
                label: if id == "-" {
                    "clients without identity".into()
                } else {
                    id.rsplit('/').next().unwrap_or(&id).to_string()
                },
                platform: String::new(),
                kind: NodeKind::Client,
                link: String::new(),
                traffic: 0,
            });
            vec![id]
        } else {
            e.from_workloads.clone()
        };
        for f in from {
            for id in [&f, &to] {
                if let Some(n) = nodes.get_mut(id.as_str()) {
                    n.traffic += e.golden.requests;
                }
            }
            lines.push((f, to.clone(), e));
        }
    }

    // The nodes with the most traffic, then by key.
    let total_nodes = nodes.len();
    let mut ranked: Vec<Ranked<'_>> = nodes.iter().collect();
    ranked.sort_by(|a, b| b.1.traffic.cmp(&a.1.traffic).then_with(|| a.0.cmp(b.0)));
    ranked.truncate(MAX_NODES);
    // Each node's call depth: its distance from the nodes no one calls (breadth first, by
    // key), or, in a circle of calls no such node reaches, from the circle's first node.
    let mut callees: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, to, _) in &lines {
        if from != to {
            callees
                .entry(from.as_str())
                .or_default()
                .insert(to.as_str());
        }
    }
    let called: BTreeSet<&str> = callees.values().flatten().copied().collect();
    let starts = nodes
        .keys()
        .filter(|k| !called.contains(k.as_str()))
        .chain(nodes.keys().filter(|k| called.contains(k.as_str())));
    let mut depth: HashMap<&str, usize> = HashMap::new();
    let mut queue = VecDeque::new();
    for start in starts {
        if depth.contains_key(start.as_str()) {
            continue;
        }
        depth.insert(start.as_str(), 0);
        queue.push_back(start.as_str());
        while let Some(n) = queue.pop_front() {
            let next = (depth[n] + 1).min(MAX_DEPTH - 1);
            for &c in callees.get(n).into_iter().flatten() {
                if !depth.contains_key(c) {
                    depth.insert(c, next);
                    queue.push_back(c);
                }
            }
        }
    }
    // Namespace -> depth -> nodes.
    let mut bands: BTreeMap<&str, BTreeMap<usize, Vec<Ranked<'_>>>> = BTreeMap::new();
    for (id, c) in ranked {
        bands
            .entry(c.namespace.as_str())
            .or_default()
            .entry(depth.get(id.as_str()).copied().unwrap_or(0))
            .or_default()
            .push((id, c));
    }

    let mut placed: HashMap<&str, (usize, i64, i64)> = HashMap::new();
    let mut out_nodes = Vec::new();
    let mut out_bands = Vec::new();
    let mut column = 0usize;
    let mut deepest = 0usize;
    for (namespace, layers) in bands {
        out_bands.push(Band {
            name: namespace.to_string(),
            x: MARGIN + column as i64 * COLUMN_WIDTH,
        });
        let chunks = layers.into_values().flat_map(|mut members| {
            members.sort_by(|a, b| a.0.cmp(b.0));
            members
                .chunks(ROWS_PER_COLUMN)
                .map(<[_]>::to_vec)
                .collect::<Vec<_>>()
        });
        for chunk in chunks {
            for (row, (id, c)) in chunk.iter().enumerate() {
                let x = MARGIN + column as i64 * COLUMN_WIDTH;
                let y = TOP + row as i64 * ROW_HEIGHT;
                placed.insert(id.as_str(), (column, x, y));
                let detail = match (c.kind, c.platform.is_empty()) {
                    (NodeKind::Workload, true) => "workload".to_string(),
                    (NodeKind::Workload, false) => c.platform.clone(),
                    (NodeKind::Service, true) => "service without proxy".to_string(),
                    (NodeKind::Service, false) => format!("{} · service", c.platform),
                    (NodeKind::Client, _) => "client".to_string(),
                };
                out_nodes.push(Node {
                    id: (*id).clone(),
                    label: fit(&c.label),
                    detail: fit(&detail),
                    kind: c.kind,
                    link: c.link.clone(),
                    x,
                    y,
                    text_x: x + 10,
                    text_y: y + 19,
                    detail_y: y + 37,
                });
            }
            deepest = deepest.max(chunk.len());
            column += 1;
        }
    }

    let mut out_edges = Vec::new();
    let mut hidden_edges = 0;
    for (from, to, e) in &lines {
        let (Some(&a), Some(&b)) = (placed.get(from.as_str()), placed.get(to.as_str())) else {
            hidden_edges += 1;
            continue;
        };
        let cells = EdgeCells::of(e);
        let health = Health::of(e.golden.success_rate);
        out_edges.push(Edge {
            path: edge_path(a, b, from == to),
            health,
            title: format!(
                "{from} to {to}, {}: {} success, {} requests a second, p99 {}, {} requests{}",
                health.words(),
                cells.golden.success,
                cells.golden.rps,
                cells.golden.p99,
                cells.golden.requests,
                if e.mtls {
                    ", mutual TLS"
                } else {
                    ", no mutual TLS"
                },
            ),
        });
    }

    let table: Vec<EdgeCells> = edges
        .iter()
        .take(MAX_EDGE_ROWS)
        .map(EdgeCells::of)
        .collect();
    Topology {
        width: (2 * MARGIN + column.max(1) as i64 * COLUMN_WIDTH - (COLUMN_WIDTH - NODE_WIDTH))
            .max(320),
        height: TOP + deepest.max(1) as i64 * ROW_HEIGHT + MARGIN,
        node_width: NODE_WIDTH,
        node_height: NODE_HEIGHT,
        bands: out_bands,
        hidden_nodes: total_nodes - out_nodes.len(),
        total_nodes,
        nodes: out_nodes,
        edges: out_edges,
        hidden_edges,
        table_hidden: edges.len() - table.len(),
        table,
    }
}

/// The curve from node `a` to node `b` (column, x, y of each), ending at `b`'s side.
fn edge_path(a: (usize, i64, i64), b: (usize, i64, i64), itself: bool) -> String {
    let (ca, ax, ay) = a;
    let (cb, bx, by) = b;
    let mid = NODE_HEIGHT / 2;
    if itself {
        let (x, y) = (ax + NODE_WIDTH, ay);
        return format!(
            "M {x} {} C {} {}, {} {}, {x} {}",
            y + 12,
            x + 48,
            y - 12,
            x + 48,
            y + NODE_HEIGHT + 12,
            y + NODE_HEIGHT - 12
        );
    }
    let (sx, ex, bend) = match ca.cmp(&cb) {
        std::cmp::Ordering::Less => (ax + NODE_WIDTH, bx, ((bx - ax - NODE_WIDTH) / 2).max(30)),
        std::cmp::Ordering::Greater => (ax, bx + NODE_WIDTH, -((ax - bx - NODE_WIDTH) / 2).max(30)),
        // In one column: out of the right side and back in.
        std::cmp::Ordering::Equal => {
            let (sx, ex) = (ax + NODE_WIDTH, bx + NODE_WIDTH);
            let (sy, ey) = (ay + mid, by + mid);
            let out = 40 + (by - ay).abs() / 6;
            return format!(
                "M {sx} {sy} C {} {sy}, {} {ey}, {ex} {ey}",
                sx + out,
                ex + out
            );
        }
    };
    let (sy, ey) = (ay + mid, by + mid);
    format!(
        "M {sx} {sy} C {} {sy}, {} {ey}, {ex} {ey}",
        sx + bend,
        ex - bend
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Golden;

    fn workload(ns: &str, name: &str, platform: &str) -> (String, Candidate) {
        (
            format!("{ns}/{name}"),
            Candidate {
                namespace: ns.into(),
                label: name.into(),
                platform: platform.into(),
                kind: NodeKind::Workload,
                link: String::new(),
                traffic: 0,
            },
        )
    }

    fn edge(from: &str, to: &str, requests: u64, success: Option<f64>) -> EdgeRow {
        EdgeRow {
            from: format!("spiffe://weft.test/ns/{from}"),
            from_workloads: vec![from.into()],
            to: to.into(),
            to_identity: String::new(),
            mtls: true,
            golden: Golden {
                requests,
                success_rate: success,
                ..Golden::default()
            },
        }
    }

    #[test]
    fn namespaces_become_columns_in_a_stable_order() {
        let nodes: BTreeMap<String, Candidate> = [
            workload("shop", "web", "kubernetes"),
            workload("shop", "api", "kubernetes"),
            workload("billing", "ledger", "nomad"),
        ]
        .into_iter()
        .collect();
        let edges = vec![
            edge("shop/web", "shop/api", 10, Some(1.0)),
            edge("shop/api", "billing/ledger", 10, Some(0.96)),
            edge("shop/web", "db.data", 3, Some(0.5)),
        ];
        let t = layout(nodes.clone(), &edges);
        assert_eq!(t, layout(nodes, &edges), "the same input, the same drawing");
        let names: Vec<&str> = t.bands.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["billing", "data", "shop"]);
        let at = |id: &str| t.nodes.iter().find(|n| n.id == id).unwrap();
        assert_eq!(at("billing/ledger").x, MARGIN);
        assert_eq!(at("db.data").x, MARGIN + COLUMN_WIDTH);
        // In a namespace, callers to the left of whom they call.
        assert_eq!(at("shop/web").x, MARGIN + 2 * COLUMN_WIDTH);
        assert_eq!(at("shop/api").x, MARGIN + 3 * COLUMN_WIDTH);
        assert_eq!(at("shop/api").y, at("shop/web").y);
        assert_eq!(at("db.data").kind, NodeKind::Service);
        assert_eq!(at("shop/web").detail, "kubernetes");
        let health: Vec<Health> = t.edges.iter().map(|e| e.health).collect();
        assert_eq!(health, [Health::Good, Health::Fair, Health::Poor]);
        assert_eq!(t.table.len(), 3);
        assert_eq!((t.hidden_nodes, t.hidden_edges), (0, 0));
    }

    #[test]
    fn calls_in_a_circle_end_at_the_deepest_column() {
        let nodes: BTreeMap<String, Candidate> = (0..10)
            .map(|i| workload("shop", &format!("w{i}"), "local"))
            .collect();
        // w0 -> w1 -> ... -> w9 -> w0, and w3 calls itself.
        let mut edges: Vec<EdgeRow> = (0..10)
            .map(|i| {
                edge(
                    &format!("shop/w{i}"),
                    &format!("shop/w{}", (i + 1) % 10),
                    1,
                    None,
                )
            })
            .collect();
        edges.push(edge("shop/w3", "shop/w3", 1, Some(1.0)));
        let t = layout(nodes, &edges);
        let columns: std::collections::BTreeSet<i64> = t.nodes.iter().map(|n| n.x).collect();
        assert_eq!(columns.len(), MAX_DEPTH);
        assert_eq!(t.edges.len(), 11);
        assert!(t.edges.iter().any(|e| {
            e.path
                .starts_with(&format!("M {} ", MARGIN + 3 * COLUMN_WIDTH + NODE_WIDTH))
        }));
    }

    #[test]
    fn at_most_max_nodes_are_drawn_the_busiest_first() {
        let nodes: BTreeMap<String, Candidate> = (0..MAX_NODES + 50)
            .map(|i| workload("shop", &format!("w{i:03}"), "local"))
            .collect();
        let edges = vec![edge("shop/w249", "shop/w248", 5, None)];
        let t = layout(nodes, &edges);
        assert_eq!(t.nodes.len(), MAX_NODES);
        assert_eq!(t.total_nodes, MAX_NODES + 50);
        assert_eq!(t.hidden_nodes, 50);
        assert!(
            t.nodes.iter().any(|n| n.id == "shop/w249"),
            "busy nodes stay"
        );
        assert_eq!(t.edges.len(), 1);
        assert_eq!(t.edges[0].health, Health::Unknown);
        let lowest = t.nodes.iter().map(|n| n.y).max().unwrap();
        assert!(lowest < TOP + ROWS_PER_COLUMN as i64 * ROW_HEIGHT);
    }

    #[test]
    fn clients_without_a_reporting_workload_get_a_node_of_their_own() {
        let mut e = edge("shop/web", "shop/api", 1, Some(1.0));
        e.from_workloads.clear();
        e.from = "-".into();
        let t = layout(BTreeMap::new(), &[e]);
        let client = t.nodes.iter().find(|n| n.id == "-").unwrap();
        assert_eq!(client.kind, NodeKind::Client);
        assert_eq!(namespace_of("spiffe://weft.test/ns/shop/sa/web"), "shop");
        assert_eq!(namespace_of("web.shop"), "shop");
        assert_eq!(fit(&"x".repeat(40)).chars().count(), LABEL_CHARS);
    }
}
