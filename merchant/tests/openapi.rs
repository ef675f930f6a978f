//! SPEC §13: the OpenAPI document lists every route the router serves, and every problem code
//! under the status it is answered with.

use ap2_testkit::openapi::{
    assert_codes_listed, assert_routes_documented, assert_statuses_documented,
};

#[test]
fn spec13_every_route_is_in_the_document() {
    assert_routes_documented(merchant::openapi(), include_str!("../src/lib.rs"));
}

/// The sources of every problem the service answers with.
const SOURCES: &[&str] = &[
    include_str!("../src/routes/sessions.rs"),
    include_str!("../src/routes/mandates.rs"),
    include_str!("../src/routes/mod.rs"),
    include_str!("../src/routes/dpop.rs"),
    include_str!("../src/routes/products.rs"),
    include_str!("../src/routes/health.rs"),
    include_str!("../../crates/service/src/dpop.rs"),
];

#[test]
fn spec13_every_problem_code_is_listed() {
    assert_codes_listed(merchant::openapi(), SOURCES);
}

#[test]
fn spec13_every_problem_is_documented_under_its_status() {
    assert_statuses_documented(merchant::openapi(), SOURCES);
}
