//! The OpenAPI document (`openapi.json`, served at `/api/v1/openapi.json`) against the code:
//! every route of the router is described with its methods, and the error codes are exactly
//! the table in `error.rs`.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const PREFIX: &str = "/api/v1";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn document() -> Value {
    let text = std::fs::read_to_string(manifest_dir().join("openapi.json")).expect("read openapi.json");
    serde_json::from_str(&text).expect("openapi.json is valid JSON")
}

/// A `.route(...)` call in `lib.rs`: the path as written, its HTTP methods, and whether it is
/// in the router nested under `/api/v1`.
#[derive(Debug)]
struct Route {
    path: String,
    methods: BTreeSet<String>,
    nested: bool,
}

/// Reads the `.route("...", ...)` calls of `lib.rs`. Calls between `let api = Router::new()` and
/// the end of that statement belong to the router nested under `/api/v1`.
fn routes() -> Vec<Route> {
    let src = std::fs::read_to_string(manifest_dir().join("src/lib.rs")).expect("read src/lib.rs");
    let api_start = src.find("let api = Router::new()").expect("lib.rs builds `let api = Router::new()`");
    let api_end = api_start + src[api_start..].find(';').expect("the `api` router statement ends");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = src[from..].find(".route(") {
        let open = from + i + ".route".len();
        // The call's text, up to its matching parenthesis.
        let mut depth = 0;
        let mut close = open;
        for (j, c) in src[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let call = &src[open + 1..close];
        let q1 = call.find('"').expect("route path literal");
        let q2 = q1 + 1 + call[q1 + 1..].find('"').expect("route path literal ends");
        let path = call[q1 + 1..q2].to_owned();
        let handlers = &call[q2 + 1..];
        let mut methods = BTreeSet::new();
        for m in ["get", "post", "put", "delete", "patch", "head", "options"] {
            let pat = format!("{m}(");
            let mut k = 0;
            while let Some(p) = handlers[k..].find(&pat) {
                let at = k + p;
                let before = handlers[..at].chars().next_back();
                if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    methods.insert(m.to_owned());
                }
                k = at + pat.len();
            }
        }
        assert!(!methods.is_empty(), "no methods found for route {path}: {call}");
        out.push(Route { path, methods, nested: open > api_start && open < api_end });
        from = close;
    }
    assert!(out.iter().any(|r| r.nested), "found no routes of the `api` router in lib.rs");
    out
}

/// axum's `{*rest}` wildcard is an ordinary `{rest}` parameter in OpenAPI.
fn openapi_path(axum_path: &str) -> String {
    axum_path.replace("{*", "{")
}

/// Follows a local `$ref` (`#/...`) to what it points at.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
            resolve(doc, doc.pointer(pointer).unwrap_or_else(|| panic!("$ref {r} points at nothing")))
        }
        None => v,
    }
}

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

#[test]
fn is_openapi_3_1() {
    let doc = document();
    let version = doc["openapi"].as_str().expect("`openapi` is a string");
    assert!(version.starts_with("3.1"), "openapi is {version}, not 3.1");
    assert_eq!(doc["servers"][0]["url"], PREFIX, "paths are relative to {PREFIX}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
}

#[test]
fn every_route_under_api_v1_is_documented_with_its_methods() {
    let doc = document();
    let paths = doc["paths"].as_object().expect("`paths` is an object");
    let description = doc["info"]["description"].as_str().unwrap_or_default();
    let mut checked = 0;
    for route in routes() {
        let under_prefix = if route.nested {
            Some(route.path.clone())
        } else {
            route.path.strip_prefix(PREFIX).filter(|p| p.starts_with('/')).map(str::to_owned)
        };
        let Some(path) = under_prefix else {
            // A root-only route: the document says it exists.
            assert!(
                description.contains(&format!("`{}`", route.path)),
                "root route {} is not mentioned in info.description",
                route.path
            );
            continue;
        };
        let path = openapi_path(&path);
        let item = paths.get(&path).unwrap_or_else(|| panic!("route {path} (from lib.rs) is missing from `paths`"));
        for m in &route.methods {
            let op = item.get(m).unwrap_or_else(|| panic!("{} {path} is routed but not documented", m.to_uppercase()));
            assert!(op["operationId"].is_string(), "{} {path} has no operationId", m.to_uppercase());
            assert!(op["responses"].is_object(), "{} {path} has no responses", m.to_uppercase());
        }
        for m in METHODS {
            if item.get(m).is_some() && !route.methods.contains(m) {
                panic!("{} {path} is documented but not routed", m.to_uppercase());
            }
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} routes checked; is lib.rs parsed right?");
}

#[test]
fn operation_ids_are_unique_and_path_parameters_declared() {
    let doc = document();
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let wanted: BTreeSet<String> =
            path.split('{').skip(1).map(|s| s.split('}').next().unwrap().to_owned()).collect();
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{m} {path} has no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
            let declared: BTreeSet<String> = item["parameters"]
                .as_array()
                .into_iter()
                .chain(op["parameters"].as_array())
                .flatten()
                .map(|p| resolve(&doc, p))
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(declared, wanted, "path parameters of {m} {path}");
        }
    }
}

#[test]
fn every_ref_resolves() {
    fn walk(doc: &Value, v: &Value) {
        match v {
            Value::Object(m) => {
                if m.contains_key("$ref") {
                    resolve(doc, v);
                }
                m.values().for_each(|x| walk(doc, x));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(doc, x)),
            _ => {}
        }
    }
    let doc = document();
    walk(&doc, &doc);
}

#[test]
fn error_codes_match_the_table() {
    let doc = document();
    let code = &doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"];
    let documented: BTreeSet<&str> =
        code["enum"].as_array().expect("Error code has an enum").iter().map(|c| c.as_str().unwrap()).collect();
    let table: BTreeMap<&str, u16> = shoal_api::ALL_CODES.iter().copied().collect();
    for (c, status) in &table {
        assert!(documented.contains(c), "code {c} of error.rs is missing from the Error schema's enum");
        assert_eq!(code["x-status-by-code"][*c].as_u64(), Some(u64::from(*status)), "status of code {c}");
    }
    for c in &documented {
        assert!(table.contains_key(c), "code {c} is documented but not in error.rs's table");
    }

    // Each error response lists only codes that come with its status.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            let Some(responses) = item.get(m).and_then(|op| op["responses"].as_object()) else { continue };
            for (status, response) in responses {
                let response = resolve(&doc, response);
                let schema = &response["content"]["application/json"]["schema"];
                let Some(parts) = schema["allOf"].as_array() else { continue };
                for part in parts {
                    let codes = part["properties"]["error"]["properties"]["code"]["enum"].as_array();
                    for c in codes.into_iter().flatten() {
                        let c = c.as_str().unwrap();
                        let expected = table.get(c).unwrap_or_else(|| panic!("{m} {path}: unknown code {c}"));
                        assert_eq!(status, &expected.to_string(), "{m} {path}: code {c} under status {status}");
                    }
                }
            }
        }
    }
}
