//! Checks of a service's OpenAPI document against its own source (SPEC §13).

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
