"""The Grafana dashboards of configs/grafana/, read as Grafana reads them and checked against the
proxy: each file a dashboard (title, uid unique across the files, schemaVersion, panels with
ids and grid positions), a Prometheus data source variable that every panel and query uses, and
every PromQL expression (panel queries and variable queries) naming only metrics the proxy
exports. Those are read from the doc comment at the top of crates/weft-proxy/src/metrics.rs,
where counters already carry their _total suffix; a histogram (a name ending in _seconds) adds
its _bucket, _sum and _count series. Queries of a latency histogram's buckets must ask for
exemplars.

Standard library only. Exits 1, naming each problem, when a check fails.

Usage: python3 tests/grafana/check_dashboards.py
"""

import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "configs" / "grafana"
METRICS_RS = ROOT / "crates" / "weft-proxy" / "src" / "metrics.rs"

PANEL_TYPES = {"timeseries", "table", "stat", "row"}
# PromQL words that are not metric names: operators, modifiers and literals. Functions and
# aggregations are recognised by the parenthesis that follows them.
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2",
}

failures = []
passed = []


def fail(what):
    failures.append(what)
    print(f"FAIL {what}")


def documented_metrics():
    """The metric names in the module doc comment (`//!` lines) of the proxy's metrics.rs."""
    doc = []
    for line in METRICS_RS.read_text().splitlines():
        if not line.startswith("//!"):
            break
        doc.append(line[3:])
    names = set(re.findall(r"\bweft_[a-z0-9_]+", "\n".join(doc)))
    if not names:
        fail(f"no metric names found in the doc comment of {METRICS_RS.relative_to(ROOT)}")
    return names


def allowed_names(documented):
    allowed = set(documented)
    for name in documented:
        if name.endswith("_seconds"):
            allowed |= {name + "_bucket", name + "_sum", name + "_count"}
    return allowed


def strip_promql(expr):
    """The expression without what cannot hold a metric name: strings, label matchers, range
    and subquery durations, Grafana variables, and the label lists of by/without/on/ignoring/
    group_left/group_right."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'" r"|`[^`]*`", '""', expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)
    return expr


def metric_names(expr):
    """The metric names an expression selects."""
    if "__name__" in expr:
        return None
    names = []
    stripped = strip_promql(expr)
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped):
        word = m.group(0)
        before = stripped[: m.start()]
        if re.search(r"[0-9.]$", before):
            continue  # the unit of a number such as 5m, or an exponent
        if word.lower() in KEYWORDS:
            continue
        if re.match(r"\s*\(", stripped[m.end():]):
            continue  # a function or an aggregation
        names.append(word)
    return names


def check_expr(where, expr, allowed):
    if not expr or not expr.strip():
        fail(f"{where}: an empty query")
        return
    names = metric_names(expr)
    if names is None:
        fail(f"{where}: selects metrics by __name__; name them instead: {expr}")
        return
    if not names:
        fail(f"{where}: no metric in {expr}")
    for name in names:
        if name not in allowed:
            fail(f"{where}: {name} is not a metric the proxy exports (crates/weft-proxy/src/metrics.rs): {expr}")


def uses_variable(datasource, variables):
    """Whether a datasource reference is a Prometheus one given by a datasource variable."""
    if not isinstance(datasource, dict) or datasource.get("type") != "prometheus":
        return False
    uid = datasource.get("uid", "")
    m = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", uid)
    return bool(m) and (m.group(1) or m.group(2)) in variables


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def check_dashboard(path, allowed, uids):
    name = path.relative_to(ROOT)
    before = len(failures)
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        fail(f"{name}: not JSON: {e}")
        return
    if not isinstance(d, dict):
        fail(f"{name}: not a dashboard object")
        return
    for key in ("title", "uid"):
        if not isinstance(d.get(key), str) or not d[key]:
            fail(f"{name}: no {key}")
    uid = d.get("uid", "")
    if uid in uids:
        fail(f"{name}: uid {uid} is also {uids[uid]}'s")
    uids[uid] = name
    if len(uid) > 40:
        fail(f"{name}: uid {uid} is longer than Grafana's 40 characters")
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        fail(f"{name}: schemaVersion {d.get('schemaVersion')}, not a current one (36 or later)")
    if not isinstance(d.get("panels"), list) or not d["panels"]:
        fail(f"{name}: no panels")
        return

    variables = d.get("templating", {}).get("list", [])
    if not isinstance(variables, list):
        fail(f"{name}: templating.list is not a list")
        variables = []
    ds_vars = {v.get("name") for v in variables if v.get("type") == "datasource" and v.get("query") == "prometheus"}
    if not ds_vars:
        fail(f"{name}: no template variable of type datasource for prometheus")
    queries = 0
    for v in variables:
        if v.get("type") != "query":
            continue
        where = f"{name}: variable {v.get('name')}"
        if not uses_variable(v.get("datasource"), ds_vars):
            fail(f"{where}: its datasource is {v.get('datasource')}, not the datasource variable")
        query = v.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query or "", re.S)
        if m:
            check_expr(where, m.group(1), allowed)
        elif re.fullmatch(r"\s*query_result\((.*)\)\s*", query or "", re.S):
            check_expr(where, re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S).group(1), allowed)
        else:
            fail(f"{where}: a query this check cannot read: {query!r}")
        queries += 1

    ids = set()
    for p in all_panels(d["panels"]):
        title = p.get("title", "")
        where = f"{name}: panel {p.get('id')} {title!r}"
        if p.get("type") not in PANEL_TYPES:
            fail(f"{where}: type {p.get('type')!r}, not one of {sorted(PANEL_TYPES)}")
        if not isinstance(p.get("id"), int) or p["id"] in ids:
            fail(f"{where}: its id is missing or not unique")
        ids.add(p.get("id"))
        pos = p.get("gridPos", {})
        if not all(isinstance(pos.get(k), int) for k in ("h", "w", "x", "y")) or pos.get("x", 0) + pos.get("w", 0) > 24:
            fail(f"{where}: gridPos {pos}")
        if not title:
            fail(f"{where}: no title")
        if p.get("type") == "row":
            continue
        if not uses_variable(p.get("datasource"), ds_vars):
            fail(f"{where}: its datasource is {p.get('datasource')}, not the datasource variable")
        targets = p.get("targets", [])
        if not targets:
            fail(f"{where}: no queries")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)) or not all(refs):
            fail(f"{where}: refIds {refs}")
        for t in targets:
            twhere = f"{where} query {t.get('refId')}"
            if "datasource" in t and not uses_variable(t["datasource"], ds_vars):
                fail(f"{twhere}: its datasource is {t['datasource']}, not the datasource variable")
            expr = t.get("expr", "")
            check_expr(twhere, expr, allowed)
            queries += 1
            if re.search(r"\bweft_\w+_seconds_bucket\b", expr) and p.get("type") == "timeseries" and t.get("exemplar") is not True:
                fail(f"{twhere}: a latency histogram without exemplars")
    if len(failures) == before:
        passed.append(name)
        print(f"ok   {name}: {d.get('title')}, {len(ids)} panels, {queries} queries, metrics all the proxy's")


def main():
    documented = documented_metrics()
    allowed = allowed_names(documented)
    files = sorted(DASHBOARDS.glob("*.json"))
    if not files:
        fail(f"no dashboard in {DASHBOARDS.relative_to(ROOT)}")
    uids = {}
    for path in files:
        check_dashboard(path, allowed, uids)
    print(f"grafana: {len(passed)} passed, {len(files) - len(passed)} failed")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
