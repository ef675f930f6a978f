//! SPEC §13: the OpenAPI document lists every route the router serves, and every problem code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use ap2_testkit::openapi::{codes_in, routes_in};

#[test]
fn spec13_every_route_is_in_the_document() {
    let routes = routes_in(include_str!("../src/lib.rs"));
    assert!(routes.len() >= 8, "{routes:?}");
    let doc = wallet::openapi();
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
    let doc = wallet::openapi();
    let listed: Vec<&str> = doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let answered = codes_in(&[
        include_str!("../src/routes/users.rs"),
        include_str!("../src/routes/requests.rs"),
        include_str!("../src/routes/pages.rs"),
        include_str!("../src/routes/mod.rs"),
        include_str!("../src/routes/health.rs"),
    ]);
    assert!(!answered.is_empty());
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
