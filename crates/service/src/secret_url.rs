//! A connection URL taken from a flag or the environment (`--database-url`, `--redis-url`,
//! `--redis-cluster-nodes`): the value as given, and a `Debug` that never shows its password,
//! so a configuration printed for debugging does not leak the database's credentials.

use std::fmt;
use std::str::FromStr;

/// What stands for a password in [`SecretUrl::redacted`].
const HIDDEN: &str = "***";

/// A URL (or a PostgreSQL `key=value` connection string) that may hold a password.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The value as given, password included: for the client that connects with it only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value with every password replaced by `***`: the password of the authority
    /// (`scheme://user:password@host`), a `password=` query parameter, and a `password=` field
    /// of a `key=value` connection string (quoted or not).
    pub fn redacted(&self) -> String {
        let text = self.0.as_str();
        match text.split_once("://") {
            Some((scheme, rest)) => {
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                let (authority, tail) = rest.split_at(end);
                let authority = match authority.rsplit_once('@') {
                    Some((userinfo, host)) => match userinfo.split_once(':') {
                        Some((user, _)) => format!("{user}:{HIDDEN}@{host}"),
                        None => authority.to_owned(),
                    },
                    None => authority.to_owned(),
                };
                format!("{scheme}://{authority}{}", redact_query(tail))
            }
            None => redact_key_values(text),
        }
    }
}

/// `?a=1&password=x#f` → `?a=1&password=***#f`.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}={HIDDEN}"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{path}?{}", pairs.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// `host=db password='a b' user=x` → `host=db password=*** user=x`: a value runs to the next
/// space, or, quoted, to its closing quote (a backslash escapes the next character).
fn redact_key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_key(rest, "password") {
        let (before, from_key) = rest.split_at(start);
        out.push_str(before);
        let after_key = from_key.get("password".len()..).unwrap_or_default();
        let trimmed = after_key.trim_start();
        let Some(value) = trimmed.strip_prefix('=') else {
            out.push_str(from_key.get(.."password".len()).unwrap_or_default());
            rest = after_key;
            continue;
        };
        let value = value.trim_start();
        let mut chars = value.char_indices();
        let end = if value.starts_with('\'') {
            chars.next();
            let mut escaped = false;
            let mut end = value.len();
            for (i, c) in chars {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '\'' {
                    end = i + 1;
                    break;
                }
            }
            end
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str("password=");
        out.push_str(HIDDEN);
        rest = value.get(end..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// Where `key` starts as a whole word (at the start or after a space), case-insensitively.
fn find_key(text: &str, key: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(found) = lower.get(from..).and_then(|t| t.find(key)) {
        let at = from + found;
        let word_start = at == 0
            || lower
                .as_bytes()
                .get(at - 1)
                .is_some_and(u8::is_ascii_whitespace);
        let next = lower.as_bytes().get(at + key.len()).copied();
        if word_start && matches!(next, Some(b'=' | b' ' | b'\t')) {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::SecretUrl;

    #[test]
    fn a_password_is_never_in_the_debug_form() {
        for (given, shown) in [
            (
                "postgres://app:s3cret@db.internal:5432/pay?sslmode=require",
                "postgres://app:***@db.internal:5432/pay?sslmode=require",
            ),
            (
                "redis://:s3cret@10.0.0.7:6379/0",
                "redis://:***@10.0.0.7:6379/0",
            ),
            ("rediss://user:p%40ss:w@h:1", "rediss://user:***@h:1"),
            (
                "postgres://db/pay?user=app&password=s3cret#x",
                "postgres://db/pay?user=app&password=***#x",
            ),
            (
                "host=db user=app password=s3cret dbname=pay",
                "host=db user=app password=*** dbname=pay",
            ),
            (
                "host=db password = 'it\\'s s3cret' dbname=pay",
                "host=db password=*** dbname=pay",
            ),
            ("PASSWORD=s3cret host=db", "password=*** host=db"),
            // Nothing to hide: shown as given.
            ("postgres://app@db/pay", "postgres://app@db/pay"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("host=db user=password_admin", "host=db user=password_admin"),
        ] {
            let url: SecretUrl = given.parse().unwrap();
            assert_eq!(url.redacted(), shown, "{given}");
            let debug = format!("{url:?}");
            assert!(!debug.contains("s3cret"), "{debug}");
            assert_eq!(url.expose(), given);
        }
    }
}
