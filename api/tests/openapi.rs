//! The OpenAPI document: served without a key, OpenAPI 3.1, listing every route with every status
//! it can answer. (schemathesis against the live stack with every check:
//! `e2e/tests/openapi.rs`.)

use orderflow_testkit::Stack;
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeSet;

/// Every route the router serves, with its methods (besides `/openapi.json` and `/docs`).
const ROUTES: &[(&str, &[&str])] = &[
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/v1/orders", &["get", "post"]),
    ("/v1/orders/{order_id}", &["get", "patch"]),
    ("/v1/orders/{order_id}/commands", &["get", "post"]),
    ("/v1/orders/{order_id}/events", &["get"]),
    ("/v1/orders/{order_id}/shipping-address", &["put"]),
    ("/v1/commands/{command_id}", &["get"]),
    ("/v1/events", &["get"]),
    ("/v1/inventory/{sku}", &["get", "put"]),
    ("/v1/webhook-endpoints", &["get", "post"]),
    ("/v1/webhook-endpoints/{endpoint_id}", &["get", "delete"]),
    ("/v1/webhook-endpoints/{endpoint_id}/deliveries", &["get"]),
    (
        "/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/retry",
        &["post"],
    ),
];

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn operations(document: &Value) -> Vec<(String, String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            if HTTP_METHODS.contains(&method.as_str()) {
                found.push((path.clone(), method.clone(), operation));
            }
        }
    }
    found
}

fn statuses(operation: &Value) -> BTreeSet<&str> {
    operation["responses"]
        .as_object()
        .expect("responses")
        .keys()
        .map(String::as_str)
        .collect()
}

/// Resolves every `$ref` in the document, panicking on one that names nothing.
fn check_refs(document: &Value, node: &Value) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                let pointer = reference
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("an external $ref {reference}"));
                assert!(
                    document.pointer(pointer).is_some(),
                    "$ref {reference} names nothing"
                );
            }
            map.values().for_each(|v| check_refs(document, v));
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(document, v)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_served_without_a_key_and_lists_every_route_with_every_status() {
    let app = Stack::builder().api().start().await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await.unwrap();
    let version = document["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "OpenAPI {version}");
    check_refs(&document, &document);
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"],
        serde_json::json!({"type": "http", "scheme": "bearer", "description": document["components"]["securitySchemes"]["bearer"]["description"]})
    );

    // Exactly the routes and methods of the router.
    let documented: BTreeSet<(String, String)> = operations(&document)
        .into_iter()
        .map(|(path, method, _)| (path, method))
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|(path, methods)| methods.iter().map(|m| (path.to_string(), m.to_string())))
        .collect();
    assert_eq!(documented, expected);

    for (path, method, operation) in operations(&document) {
        let statuses = statuses(operation);
        let secured = path.starts_with("/v1/");
        assert!(statuses.contains("503"), "{method} {path}: no 503");
        // Every route, secured or not, is behind the header limits.
        assert!(statuses.contains("431"), "{method} {path}: no 431");
        // What goes through the pipeline is accepted (202); inventory's PUT sets at once (200).
        let accepted = method == "post" || method == "patch" || path.ends_with("/shipping-address");
        // Registering a webhook endpoint creates it (201); a deletion answers nothing (204).
        let success = match (method.as_str(), path.as_str()) {
            ("post", "/v1/webhook-endpoints") => "201",
            ("delete", _) => "204",
            _ if accepted => "202",
            _ => "200",
        };
        assert!(statuses.contains(success), "{method} {path}: no {success}");
        if secured {
            assert_eq!(
                operation["security"],
                serde_json::json!([{"bearer": []}]),
                "{method} {path}"
            );
            for status in ["400", "401", "429"] {
                assert!(statuses.contains(status), "{method} {path}: no {status}");
            }
        } else {
            assert!(operation.get("security").is_none(), "{method} {path}");
            assert_eq!(
                statuses,
                BTreeSet::from(["200", "431", "503"]),
                "{method} {path}"
            );
        }
        if path.contains('{') {
            assert!(statuses.contains("404"), "{method} {path}: no 404");
        }
        // Every write takes a JSON body, but a retry, which names everything in its path.
        if (method == "post" || method == "put") && !path.ends_with("/retry") {
            for status in ["413", "415", "422"] {
                assert!(statuses.contains(status), "{method} {path}: no {status}");
            }
            let body = &operation["requestBody"];
            assert_eq!(body["required"], true, "{method} {path}");
            assert!(body["content"]["application/json"].is_object());
        }
        if path == "/v1/events" {
            // A page of JSON, or the feed as server-sent events; history pruned is a 410.
            let content = &operation["responses"]["200"]["content"];
            assert!(content["application/json"].is_object(), "{content}");
            assert!(content["text/event-stream"].is_object(), "{content}");
            assert!(statuses.contains("410"));
            assert!(
                operation["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == "Last-Event-ID" && p["in"] == "header")
            );
        }
        if path.ends_with("/shipping-address") {
            for status in ["409", "412"] {
                assert!(statuses.contains(status), "{method} {path}: no {status}");
            }
        }
        if method == "patch" {
            for status in ["409", "412", "413", "415", "422", "428"] {
                assert!(statuses.contains(status), "{method} {path}: no {status}");
            }
            let body = &operation["requestBody"];
            assert_eq!(body["required"], true, "{method} {path}");
            assert!(body["content"]["application/merge-patch+json"].is_object());
        }
        // Every POST that creates something is idempotent by key (a retry names no new thing).
        if method == "post" && !path.ends_with("/retry") {
            assert!(statuses.contains("409"), "{method} {path}: no 409");
            let key = operation["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "Idempotency-Key")
                .unwrap_or_else(|| panic!("{method} {path}: no Idempotency-Key"));
            assert_eq!(
                (&key["in"], &key["required"]),
                (&"header".into(), &true.into())
            );
        }
        if method == "post" && statuses.contains("202") && !path.ends_with("/retry") {
            assert_eq!(
                operation["responses"]["202"]["headers"]["Location"]["required"],
                true
            );
        }
        // Every error is problem+json; every 503 and 429 says when to come back.
        for (status, response) in operation["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                assert!(
                    response["content"]["application/problem+json"]["schema"]["$ref"]
                        == "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
            if status == "503" || status == "429" {
                assert_eq!(
                    response["headers"]["Retry-After"]["required"], true,
                    "{method} {path} {status}"
                );
            }
        }
    }
    let put = &document["paths"]["/v1/inventory/{sku}"]["put"];
    assert!(statuses(put).contains("403"));
    let commands = &document["paths"]["/v1/orders/{order_id}/commands"]["post"];
    let variants = commands["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
        .as_array()
        .unwrap();
    let types: Vec<&Value> = variants
        .iter()
        .map(|v| &v["properties"]["type"]["enum"][0])
        .collect();
    assert_eq!(
        types,
        [
            "add_item",
            "remove_item",
            "reserve",
            "pay",
            "ship",
            "deliver",
            "cancel",
            "update_details",
            "set_shipping_address",
        ]
    );
    assert!(
        commands["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "If-Match" && p["required"] == false)
    );
    let order = &document["paths"]["/v1/orders/{order_id}"]["get"];
    assert_eq!(
        order["responses"]["200"]["headers"]["ETag"]["required"],
        true
    );

    // Every documented operation is routed (an unknown route would be a 404 without a key, an
    // undocumented method a 405), and the UI is there.
    for (path, method, _) in operations(&document) {
        let concrete = path
            .replace("{order_id}", "0190aaaa-0000-7000-8000-000000000000")
            .replace("{command_id}", "0190aaaa-0000-7000-8000-000000000000")
            .replace("{sku}", "SKU-1");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let status = app
            .http
            .request(method.clone(), app.url(&concrete))
            .send()
            .await
            .unwrap()
            .status();
        let expected = if path.starts_with("/v1/") {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected, "{method} {concrete}");
    }
    let docs = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"));
}
