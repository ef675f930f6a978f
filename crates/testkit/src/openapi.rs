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

/// The HTTP status of a `StatusCode::NAME` constant the services answer problems with.
fn status_named(name: &str) -> Option<u16> {
    Some(match name {
        "BAD_REQUEST" => 400,
        "UNAUTHORIZED" => 401,
        "PAYMENT_REQUIRED" => 402,
        "FORBIDDEN" => 403,
        "NOT_FOUND" => 404,
        "METHOD_NOT_ALLOWED" => 405,
        "CONFLICT" => 409,
        "GONE" => 410,
        "PAYLOAD_TOO_LARGE" => 413,
        "UNSUPPORTED_MEDIA_TYPE" => 415,
        "UNPROCESSABLE_ENTITY" => 422,
        "LOCKED" => 423,
        "TOO_MANY_REQUESTS" => 429,
        "INTERNAL_SERVER_ERROR" => 500,
        "BAD_GATEWAY" => 502,
        "SERVICE_UNAVAILABLE" => 503,
        _ => return None,
    })
}

/// `(status, code)` of every problem `sources` answer with a fixed status:
/// `Problem::new(StatusCode::NAME, "code", …)`, `Problem::not_found("code", …)` (404),
/// `Problem::bad_request("code", …)` (400), `unprocessable("code", …)` (422),
/// `Problem::forbidden(…)` (403 `forbidden`) and `Problem::unauthorized(…)` (401
/// `unauthorized`). A call whose status is a variable is left out; a `StatusCode` this file
/// does not know panics.
pub fn statuses_in(sources: &[&str]) -> Vec<(u16, String)> {
    let mut pairs = Vec::new();
    for source in sources {
        for (call, fixed) in [
            ("Problem::new(", None),
            ("Problem::not_found(", Some(404)),
            ("Problem::bad_request(", Some(400)),
            ("unprocessable(", Some(422)),
        ] {
            for chunk in source.split(call).skip(1) {
                let (status, args) = match fixed {
                    Some(status) => (status, chunk),
                    None => {
                        let Some(rest) = chunk.trim_start().strip_prefix("StatusCode::") else {
                            continue;
                        };
                        let name: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                            .collect();
                        let status = status_named(&name).unwrap_or_else(|| {
                            panic!("StatusCode::{name}: add it to status_named")
                        });
                        let Some(args) = rest[name.len()..].trim_start().strip_prefix(',') else {
                            continue;
                        };
                        (status, args)
                    }
                };
                // The code is the literal right there, not one further on (a definition such
                // as `fn unprocessable(code: &str, …)` has none).
                if !args.trim_start().starts_with('"') {
                    continue;
                }
                if let Some(code) = args.split('"').nth(1)
                    && !code.is_empty()
                    && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                {
                    pairs.push((status, code.to_owned()));
                }
            }
        }
    }
    // The two whose code is fixed by the constructor.
    for source in sources {
        if source.contains("Problem::forbidden(") {
            pairs.push((403, "forbidden".to_owned()));
        }
        if source.contains("Problem::unauthorized(") {
            pairs.push((401, "unauthorized".to_owned()));
        }
    }
    pairs.sort();
    pairs.dedup();
    pairs
}

/// Whether `text` names a family such as `` `mandate_*` `` that `code` belongs to.
fn wildcard_names(text: &str, code: &str) -> bool {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|named| named.strip_suffix('*'))
        .any(|prefix| !prefix.is_empty() && code.starts_with(prefix))
}

/// Panics unless every `(status, code)` that `sources` answer with is documented: some
/// operation of `doc` has a `status` response whose description names `` `code` `` (or its
/// family, `` `mandate_*` ``). A client that reads the document must find each code under
/// the status it really comes with.
pub fn assert_statuses_documented(doc: &serde_json::Value, sources: &[&str]) {
    let answered = statuses_in(sources);
    assert!(!answered.is_empty(), "no problems found in the sources");
    let mut described = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for operations in paths.values() {
            for operation in operations.as_object().into_iter().flat_map(|o| o.values()) {
                for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                    if let Some(text) = response["description"].as_str() {
                        described.push((status.clone(), text.to_owned()));
                    }
                }
            }
        }
    }
    let missing: Vec<String> = answered
        .iter()
        .filter(|(status, code)| {
            let status = status.to_string();
            let named = format!("`{code}`");
            !described.iter().any(|(s, text)| {
                *s == status && (text.contains(&named) || wildcard_names(text, code))
            })
        })
        .map(|(status, code)| format!("{status} {code}"))
        .collect();
    assert!(
        missing.is_empty(),
        "answered but documented under no operation's response with that status: {missing:?}"
    );
}
