//! Checks of a service's OpenAPI document against its own source (SPEC §13).
#![allow(clippy::indexing_slicing)] // serde_json::Value indexing answers Null; slices end at char_indices boundaries

/// Every problem code a service's `sources` can answer with: the first string literal of each
/// `Problem::new(`, `Problem::not_found(`, `Problem::bad_request(` and `unprocessable(` call that
/// is a code (lowercase letters and `_`).
pub fn codes_in(sources: &[&str]) -> Vec<String> {
    let mut codes = Vec::new();
    for source in sources {
        for call in [
            "Problem::new(",
            "Problem::not_found(",
            "Problem::bad_request(",
            "unprocessable(",
        ] {
            for chunk in source.split(call).skip(1) {
                if let Some(code) = chunk.split('"').nth(1)
                    && !code.is_empty()
                    && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                {
                    codes.push(code.to_owned());
                }
            }
        }
    }
    codes.sort();
    codes.dedup();
    codes
}

/// `(method, path)` of every `.route("path", method(…).method(…))` in the router's source.
pub fn routes_in(source: &str) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for chunk in source.split(".route(").skip(1) {
        let Some(rest) = chunk.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some((path, rest)) = rest.split_once('"') else {
            continue;
        };
        // The method routers up to the end of this `.route(…)` call.
        let mut depth = 1usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        for method in ["get", "post", "put", "delete", "patch"] {
            if rest[..end].contains(&format!("{method}(")) {
                routes.push((method.to_owned(), path.to_owned()));
            }
        }
    }
    routes
}

/// Panics unless every route of `router_source` (a service's `lib.rs`) is an operation of `doc`.
pub fn assert_routes_documented(doc: &serde_json::Value, router_source: &str) {
    let routes = routes_in(router_source);
    assert!(!routes.is_empty(), "no routes found in the router's source");
    assert_eq!(doc["openapi"], "3.1.0");
    for (method, path) in &routes {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is served but not in /openapi.json"
        );
    }
}

/// Panics unless every code `sources` answer with is in `doc`'s `Problem.code` enum.
pub fn assert_codes_listed(doc: &serde_json::Value, sources: &[&str]) {
    let listed: Vec<&str> = doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array()
        .map(|codes| codes.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    let answered = codes_in(sources);
    assert!(!answered.is_empty(), "no codes found in the sources");
    for code in answered
        .iter()
        .map(String::as_str)
        .chain(["unauthorized", "body_too_large"])
    {
        assert!(
            listed.contains(&code),
            "{code} is answered but not in the document"
        );
    }
}
