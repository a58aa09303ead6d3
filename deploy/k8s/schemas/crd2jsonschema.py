#!/usr/bin/env python3
"""Converts one version of a CustomResourceDefinition into a strict JSON Schema (draft 7) that
check-jsonschema can validate a manifest of that kind against, without a cluster:

    git -C MIRROR show TAG:PATH/TO/crd.yaml |
        python3 deploy/k8s/schemas/crd2jsonschema.py - VERSION --source "repo@tag:path (commit C)" \
        > deploy/k8s/schemas/KIND-GROUP-VERSION.json

What it does to the CRD's `openAPIV3Schema` (what an API server would do, as far as a JSON Schema
can say it):

- `apiVersion` and `kind` must be exactly the CRD's group/version and kind; `metadata.name` is
  required (the API server sets and checks the rest of `metadata`);
- strict: every object schema that lists its `properties` refuses any other property
  (`additionalProperties: false`), unless it says `x-kubernetes-preserve-unknown-fields` or is an
  embedded resource. `kubectl apply` validates fields strictly by default since Kubernetes 1.27,
  so a misspelt field is an error there too, not silently pruned;
- OpenAPI 3.0 idioms become JSON Schema: `nullable: true` allows null, boolean
  `exclusiveMinimum`/`exclusiveMaximum` become numeric, `x-kubernetes-int-or-string` without an
  `anyOf` allows an integer or a string;
- Go's (RE2) case-insensitive flag at the start of a `pattern`, `^(?i)...`, which neither
  ECMAScript nor Python accepts there, becomes explicit classes (`[aA][bB]...`); a pattern that
  cannot be rewritten that simply is dropped (named on standard error);
- `description` texts are dropped (they are most of the size; the CRD is the documentation).

Not checked (a JSON Schema cannot): the CEL rules (`x-kubernetes-validations`), list-map key
uniqueness (`x-kubernetes-list-map-keys`), the `format`s Kubernetes defines itself
(`int-or-string`, `quantity`...) and anything the operator's webhook checks.
"""

import argparse
import json
import re
import sys

import yaml

DRAFT = "http://json-schema.org/draft-07/schema#"


def portable_pattern(pattern):
    """`pattern` in a form ECMAScript and Python both accept, or None (see the docstring)."""
    match = re.fullmatch(r"(\^?)\(\?i\)(.*)", pattern, flags=re.S)
    if not match:
        return pattern
    anchor, rest = match.groups()
    if re.search(r"[\\\[]", rest):  # escapes or classes: not rewritten by this simple fold
        return None
    return anchor + re.sub(r"[A-Za-z]", lambda m: f"[{m[0].lower()}{m[0].upper()}]", rest)


def convert(node):
    """A copy of the OpenAPI schema `node`, in JSON Schema terms (see the module's docstring)."""
    if isinstance(node, list):
        return [convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key == "properties":
            # The keys of `properties` are field names, each value a schema.
            out[key] = {name: convert(schema) for name, schema in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = convert(value) if isinstance(value, (dict, list)) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(schema) for schema in value]
        elif key == "default" or key == "example" or key == "enum":
            out[key] = value  # data, not schemas
        elif key == "pattern":
            portable = portable_pattern(value)
            if portable is None:
                print(f"dropped pattern {value!r}: not portable", file=sys.stderr)
            else:
                out[key] = portable
        else:
            out[key] = convert(value)
    if out.pop("nullable", False):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(exclusive), bool):
            if out.pop(exclusive) and bound in out:
                out[exclusive] = out.pop(bound)
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
        and not out.get("x-kubernetes-embedded-resource")
    ):
        out["additionalProperties"] = False
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("crd", help="the CRD's YAML file, or - for standard input")
    parser.add_argument("version", help="the served version to convert, e.g. v1")
    parser.add_argument("--source", required=True, help="where the CRD came from (kept as $comment)")
    args = parser.parse_args()

    text = sys.stdin.read() if args.crd == "-" else open(args.crd, encoding="utf-8").read()
    crds = [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        sys.exit(f"expected one CustomResourceDefinition, found {len(crds)}")
    spec = crds[0]["spec"]
    versions = [v for v in spec["versions"] if v["name"] == args.version]
    if not versions:
        sys.exit(f"version {args.version} not in {[v['name'] for v in spec['versions']]}")
    if not versions[0].get("served", False):
        sys.exit(f"version {args.version} is not served")

    schema = convert(versions[0]["schema"]["openAPIV3Schema"])
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "enum": [f"{spec['group']}/{args.version}"]}
    props["kind"] = {"type": "string", "enum": [spec["names"]["kind"]]}
    props["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1}},
    }
    required = schema.setdefault("required", [])
    for field in ("apiVersion", "kind", "metadata"):
        if field not in required:
            required.append(field)
    result = {
        "$schema": DRAFT,
        "$comment": (
            f"{spec['names']['kind']} {spec['group']}/{args.version}, converted by "
            f"deploy/k8s/schemas/crd2jsonschema.py from {args.source}"
        ),
        **schema,
    }
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
