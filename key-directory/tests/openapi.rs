//! SPEC §13: the OpenAPI document lists every route the router serves, and every problem code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

/// `(method, path)` of every `.route("path", method(…).method(…))` in the router's source.
fn routes_in(source: &str) -> Vec<(String, String)> {
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

#[test]
fn spec13_every_route_is_in_the_document() {
    let routes = routes_in(include_str!("../src/lib.rs"));
    assert!(routes.len() >= 9, "{routes:?}");
    let doc = key_directory::openapi();
    assert_eq!(doc["openapi"], "3.1.0");
    for (method, path) in &routes {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is served but not in /openapi.json"
        );
    }
}

#[test]
fn spec13_every_problem_code_is_listed() {
    let doc = key_directory::openapi();
    let codes: Vec<&str> = doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    // Every code the service's source can answer with.
    let sources = [
        include_str!("../src/routes/keys.rs"),
        include_str!("../src/routes/events.rs"),
        include_str!("../src/routes/mod.rs"),
        include_str!("../src/routes/health.rs"),
    ];
    for source in sources {
        for call in [
            "Problem::new(",
            "Problem::not_found(",
            "Problem::bad_request(",
            "unprocessable(",
        ] {
            for chunk in source.split(call).skip(1) {
                if let Some(code) = chunk.split('"').nth(1)
                    && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    && !code.is_empty()
                {
                    assert!(codes.contains(&code), "{code} is not in the document");
                }
            }
        }
    }
    for code in [
        "unauthorized",
        "forbidden",
        "store_unavailable",
        "body_too_large",
    ] {
        assert!(codes.contains(&code), "{code}");
    }
}
