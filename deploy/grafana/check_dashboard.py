#!/usr/bin/env python3
"""Checks the monitoring files against the metrics contract, without Grafana or Prometheus running:

    python3 deploy/grafana/check_dashboard.py [--promql-rules OUT.yml]

- the dashboard JSON parses, panel ids are unique and no two panels overlap;
- every PromQL expression of the dashboard and of the alert rules names only the series the API and
  the workers export (the list below, which is the contract they were written against), plus
  Prometheus's own `up` and `ALERTS`, and only their labels;
- with --promql-rules, every dashboard expression is written out as a recording rule, so that
  `promtool check rules OUT.yml` parses them all (promtool has no plain "parse this expression").

Exits 1 listing every problem. Needs PyYAML.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "orderflow.json"
RULES = DEPLOY / "prometheus" / "rules" / "orderflow.yml"

# series -> its own labels (every series also has the scrape's `instance` and `job`).
API_SERIES = {
    "orderflow_http_requests_total": {"method", "route", "status"},
    "orderflow_http_request_duration_seconds": {"method", "route"},
    "orderflow_commands_accepted_total": {"type", "source"},
    "orderflow_idempotent_replays_total": set(),
    "orderflow_idempotency_mismatches_total": set(),
    "orderflow_open_streams": {"kind"},
    "orderflow_intake_stage_seconds": {"stage"},
    "orderflow_intake_batches_total": set(),
    "orderflow_intake_batched_commands_total": set(),
    "orderflow_intake_recorded_alone_total": set(),
}
WORKER_SERIES = {
    "orderflow_commands_finished_total": {"type", "status", "reason"},
    "orderflow_version_conflicts_total": set(),
    "orderflow_accept_to_applied_seconds": {"status"},
    "orderflow_apply_duration_seconds": set(),
    "orderflow_inbox_duplicates_total": set(),
    "orderflow_redeliveries_total": {"partition"},
    "orderflow_dead_letters_total": {"reason"},
    "orderflow_tx_retries_total": {"cause"},
    "orderflow_outbox_backlog": set(),
    "orderflow_outbox_oldest_age_seconds": set(),
    "orderflow_partition_queue_depth": {"partition"},
    "orderflow_partition_consumer_up": {"partition"},
    "orderflow_partition_last_delivery_timestamp_seconds": {"partition"},
    "orderflow_partition_oldest_pending_age_seconds": {"partition"},
    "orderflow_dead_letter_queue_depth": set(),
}
CONTRACT = {**API_SERIES, **WORKER_SERIES}
HISTOGRAMS = {
    "orderflow_http_request_duration_seconds",
    "orderflow_accept_to_applied_seconds",
    "orderflow_apply_duration_seconds",
}
# Prometheus's own series: scrape health, and the state of the alert rules.
BUILTIN = {"up": set(), "ALERTS": None}  # None: any label (ALERTS carries the alerts' labels)
SCRAPE_LABELS = {"instance", "job"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
            "bool", "offset", "inf", "nan"}
IDENT = r"[A-Za-z_:][A-Za-z0-9_:]*"


def base(name):
    """A histogram's _bucket/_sum/_count series belong to the histogram."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def labels_of(name):
    b = base(name)
    if b in CONTRACT:
        extra = {"le"} if b in HISTOGRAMS and name.endswith("_bucket") else set()
        return CONTRACT[b] | SCRAPE_LABELS | extra
    if name in BUILTIN:
        return None if BUILTIN[name] is None else BUILTIN[name] | SCRAPE_LABELS
    return set()


def check_expr(where, expr, errors):
    """Returns the series names `expr` uses; appends what is wrong with it to `errors`."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values may hold anything
    selectors = re.findall(rf"({IDENT})\s*\{{([^}}]*)\}}", text)
    grouping = [g.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text)
                for g in group.split(",") if g.strip()]
    bare = re.sub(r"\{[^}]*\}", " ", text)
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # range and subquery durations
    names = []
    for token in re.finditer(rf"({IDENT})(\s*\()?", bare):
        word = token.group(1)
        if token.group(2) or word.lower() in KEYWORDS:
            continue  # a function call, or an operator keyword
        names.append(word)
    if not names:
        errors.append(f"{where}: names no series: {expr!r}")
    for name in names:
        if base(name) not in CONTRACT and name not in BUILTIN:
            errors.append(f"{where}: {name!r} is not a series of the contract")
    for name, matchers in selectors:
        allowed = labels_of(name)
        if allowed is None:
            continue
        for label in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            if label not in allowed:
                errors.append(f"{where}: {name} has no label {label!r}")
    known = set().union(*[labels_of(n) or set() for n in names]) if names else set()
    for label in grouping:
        if label not in known:
            errors.append(f"{where}: groups by {label!r}, a label none of {sorted(set(names))} has")
    return names


def panels_of(panels):
    for panel in panels:
        yield panel
        yield from panels_of(panel.get("panels", []))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promql-rules", metavar="OUT.yml",
                        help="write the dashboard's expressions as recording rules for promtool")
    args = parser.parse_args()
    errors = []

    dashboard = json.loads(DASHBOARD.read_text())
    seen_ids, boxes, exprs = set(), [], []
    for panel in panels_of(dashboard["panels"]):
        title = panel.get("title", "?")
        if panel["id"] in seen_ids:
            errors.append(f"panel {title!r}: id {panel['id']} used twice")
        seen_ids.add(panel["id"])
        g = panel["gridPos"]
        if g["x"] + g["w"] > 24:
            errors.append(f"panel {title!r}: wider than the 24-column grid")
        for x, y, w, h, other in boxes:
            if g["x"] < x + w and x < g["x"] + g["w"] and g["y"] < y + h and y < g["y"] + g["h"]:
                errors.append(f"panel {title!r} overlaps panel {other!r}")
        boxes.append((g["x"], g["y"], g["w"], g["h"], title))
        for target in panel.get("targets", []):
            exprs.append((title, target["expr"]))

    used = set()
    for title, expr in exprs:
        used |= {base(n) for n in check_expr(f"dashboard panel {title!r}", expr, errors)}
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            check_expr(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"], errors)

    if args.promql_rules:
        # Grafana's $__rate_interval is not PromQL; any duration stands in for it.
        out = {"groups": [{"name": "dashboard-expressions", "rules": [
            {"record": f"dashboard:expression_{i}", "expr": expr.replace("$__rate_interval", "20s")}
            for i, (_, expr) in enumerate(exprs)]}]}
        Path(args.promql_rules).write_text(yaml.safe_dump(out, sort_keys=False))

    print(f"{len(exprs)} expressions in {len(boxes)} panels; "
          f"series of the contract the dashboard does not show: {sorted(set(CONTRACT) - used) or 'none'}")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print("OK: panels fit, every expression names only series and labels of the contract")


if __name__ == "__main__":
    main()
