"""Checks the contract files against each other, without pytest:

    python3 contract/test_contract.py

- partition.py reproduces the FNV-1a reference values and every vector in partition-vectors.json;
- every fixture in fixtures.json is accepted (valid: true) or refused (valid: false) by
  command.schema.json, except those marked "schema_can_express": false, which only orderflow's
  parser refuses. The schema checks need the `jsonschema` package (pip install jsonschema);
  without it they are skipped with a notice.

The Rust side reads the same fixtures and vectors (contract/src/message.rs, contract/src/partition.rs).
"""

import json
import os
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from partition import fnv1a32, partition_of  # noqa: E402


def load(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return json.load(f)


def test_fnv1a32_reference_values():
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968


def test_partition_vectors():
    vectors = load("partition-vectors.json")["vectors"]
    assert len(vectors) >= 40, len(vectors)
    ids = {v["order_id"] for v in vectors}
    assert "00000000-0000-0000-0000-000000000000" in ids and "ffffffff-ffff-ffff-ffff-ffffffffffff" in ids
    for v in vectors:
        order_id = uuid.UUID(v["order_id"])
        assert fnv1a32(order_id.bytes) == v["fnv1a32"], v
        assert partition_of(v["order_id"], v["partitions"]) == v["partition"], v
        assert partition_of(order_id, v["partitions"]) == v["partition"], v
        assert 0 <= v["partition"] < v["partitions"] <= 65535, v
    return len(vectors)


def test_fixtures_shape():
    fixtures = load("fixtures.json")
    names = [f["name"] for f in fixtures]
    assert len(names) == len(set(names)), "fixture names are unique"
    assert any(f["valid"] for f in fixtures) and any(not f["valid"] for f in fixtures)
    valid_types = {f["message"]["command"]["type"] for f in fixtures if f["valid"]}
    expected = {"create", "add_item", "remove_item", "reserve", "pay", "ship", "deliver", "cancel",
                "update_details", "set_shipping_address"}
    assert valid_types == expected, valid_types
    for f in fixtures:
        assert set(f) <= {"name", "valid", "message", "schema_can_express"}, f["name"]
        assert isinstance(f["valid"], bool), f["name"]
        if "schema_can_express" in f:
            assert not f["valid"], f"{f['name']}: only refusals can be beyond the schema"
    return fixtures


def test_fixtures_against_schema(fixtures):
    try:
        import jsonschema
    except ImportError:
        print("SKIP schema checks: the jsonschema package is not installed (pip install jsonschema)")
        return None
    schema = load("command.schema.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    checked = 0
    for f in fixtures:
        errors = list(validator.iter_errors(f["message"]))
        if f["valid"]:
            assert not errors, f"{f['name']}: should validate: {[e.message for e in errors]}"
        elif f.get("schema_can_express", True):
            assert errors, f"{f['name']}: should not validate against the schema"
        else:
            assert not errors, f"{f['name']}: marked schema_can_express=false but the schema refuses it; drop the mark"
        checked += 1
    return checked


if __name__ == "__main__":
    test_fnv1a32_reference_values()
    n_vectors = test_partition_vectors()
    fixtures = test_fixtures_shape()
    n_schema = test_fixtures_against_schema(fixtures)
    schema_note = "skipped" if n_schema is None else f"{n_schema} fixtures checked against command.schema.json"
    print(f"ok: {n_vectors} partition vectors, {len(fixtures)} fixtures, schema: {schema_note}")
