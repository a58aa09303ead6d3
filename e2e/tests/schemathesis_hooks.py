"""schemathesis hooks for e2e/tests/openapi.rs: rules of the API that JSON Schema cannot say.

Without them schemathesis would send requests the document calls valid and the API refuses by
design (422), and report them as "valid data rejected". Neither hook turns off a check.
"""

import hashlib
import json
import re
import uuid

import schemathesis

# The Idempotency-Key rule of the document: 1 to 255 visible ASCII characters.
VALID_KEY = re.compile(r"^[!-~]{1,255}$")

# The request each Idempotency-Key was first sent with.
_first_request_of_key: dict[str, tuple] = {}


def _request_identity(case) -> tuple:
    """What the API fingerprints for a key (method, path, If-Match, body), or finer."""
    body = json.dumps(case.body, sort_keys=True, default=repr)
    if_match = (case.headers or {}).get("If-Match")
    return (case.method.upper(), case.formatted_path, if_match, body)


@schemathesis.hook
def before_call(context, case, kwargs):
    _one_line_per_sku(case)
    _webhook_urls_to_public_hosts(case)
    _fresh_idempotency_key_per_request(case)
    _one_cursor_per_list(case)
    _event_ids_the_feed_handed_out(case)


def _webhook_urls_to_public_hosts(case):
    """A webhook endpoint's URL must be `https` to a public host (a 422 otherwise, which is the
    point: no request forgery), and JSON Schema cannot say "a public host". A generated URL
    becomes one under `.invalid`, a public name that never resolves (RFC 2606): valid to register,
    and the worker's deliveries to it fail without reaching anyone. The same generated URL gives
    the same one, so a repeated request stays the same request (an idempotent replay)."""
    if case.formatted_path != "/v1/webhook-endpoints" or case.method.upper() != "POST":
        return
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("url"), str):
        name = hashlib.sha256(body["url"].encode("utf-8", "surrogatepass")).hexdigest()[:12]
        case.body = {**body, "url": f"https://hooks-{name}.example.invalid/h"}


def _event_ids_the_feed_handed_out(case):
    """`GET /v1/events` resumes after an id the feed handed out; one beyond its newest event is
    refused (400: waiting for it would silently skip every event before it), and JSON Schema
    cannot say "at most the newest id". A generated id (valid by the pattern) becomes 0, the
    place before the first event, which the feed always has while nothing is pruned."""
    if case.formatted_path != "/v1/events":
        return
    if isinstance(case.query, dict) and "after" in case.query:
        if re.match(r"^[0-9]{1,18}$", str(case.query["after"])):
            case.query = {**case.query, "after": "0"}
    headers = case.headers
    if headers and "Last-Event-ID" in headers:
        if re.match(r"^[0-9]{1,18}$", str(headers["Last-Event-ID"])):
            headers["Last-Event-ID"] = "0"


def _one_cursor_per_list(case):
    """A list page starts after one cursor or ends before one, not both (a 400); the document
    gives each parameter alone, and JSON Schema cannot say "not both" of query parameters. A
    case with both keeps `starting_after`."""
    query = case.query
    if isinstance(query, dict) and "starting_after" in query and "ending_before" in query:
        case.query = {k: v for k, v in query.items() if k != "ending_before"}


# The sku rule of the document: 1 to 64 of letters, digits, '.', '_', ':', '-'.
VALID_SKU = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _one_line_per_sku(case):
    """A new order names each sku once (a repeat is a 422); JSON Schema's `uniqueItems`
    compares whole items, so it cannot say that. A valid sku that repeats gets a numbered
    variant (still a valid sku), so every generated order has one line per sku."""
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        return
    seen = set()
    changed = False
    items = []
    for n, item in enumerate(body["items"]):
        sku = item.get("sku") if isinstance(item, dict) else None
        if isinstance(sku, str) and VALID_SKU.match(sku) and sku in seen:
            sku = f"{sku[:58]}:{n}"
            while sku in seen:
                sku = f"{sku[:58]}:{n}:"[:64]
            item = {**item, "sku": sku}
            changed = True
        if isinstance(sku, str):
            seen.add(sku)
        items.append(item)
    if changed:
        case.body = {**body, "items": items}


def _fresh_idempotency_key_per_request(case):
    """An Idempotency-Key names one request: reusing it for a different request is a 422
    (`idempotency-key-reused`, as the IETF draft says). Generated keys repeat across cases
    ("0", "a", …), so a key already sent with another request gets a fresh, equally valid one;
    a repeat of the same request keeps its key (a replay, answered 202 again)."""
    headers = case.headers
    if not headers or "Idempotency-Key" not in headers:
        return
    key = headers["Idempotency-Key"]
    if not isinstance(key, str) or not VALID_KEY.match(key):
        return  # an invalid key never reaches the idempotency store: 400
    identity = _request_identity(case)
    first = _first_request_of_key.setdefault(key, identity)
    if first != identity:
        fresh = uuid.uuid4().hex
        headers["Idempotency-Key"] = fresh
        _first_request_of_key[fresh] = identity
