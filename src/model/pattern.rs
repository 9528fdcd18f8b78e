//! Gin-style path patterns: `/users/:id`, `/static/*path`, exact paths.

use std::fmt;

/// One `/`-separated piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Must equal the request segment byte for byte.
    Static(String),
    /// `:name`: any one non-empty segment.
    Param(String),
    /// `*name`: the rest of the path, zero or more segments; always last.
    CatchAll(String),
}

/// A parsed path pattern. Request paths are matched undecoded, so `%2F`
/// never turns into a separator behind the operator's back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub raw: String,
    pub segments: Vec<Segment>,
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl PathPattern {
    /// Parses a pattern; the error says what is wrong in words an operator
    /// can act on.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(format!("path {raw:?} must start with '/'"));
        };
        if raw
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'?' || b == b'#')
        {
            return Err(format!(
                "path {raw:?} must not contain whitespace, '?' or '#'"
            ));
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut names: Vec<&str> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let seg = if let Some(name) = part.strip_prefix(':') {
                if !valid_name(name) {
                    return Err(format!(
                        "path {raw:?}: parameter {part:?} needs a name of letters, digits or '_'"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!(
                        "path {raw:?}: parameter name {name:?} is used twice"
                    ));
                }
                names.push(name);
                Segment::Param(name.to_string())
            } else if let Some(name) = part.strip_prefix('*') {
                if !valid_name(name) {
                    return Err(format!(
                        "path {raw:?}: catch-all {part:?} needs a name of letters, digits or '_'"
                    ));
                }
                if i + 1 != parts.len() {
                    return Err(format!(
                        "path {raw:?}: catch-all {part:?} must be the last segment"
                    ));
                }
                Segment::CatchAll(name.to_string())
            } else if part.contains(':') || part.contains('*') {
                return Err(format!(
                    "path {raw:?}: ':' and '*' may only start a whole segment (in {part:?})"
                ));
            } else {
                Segment::Static((*part).to_string())
            };
            segments.push(seg);
        }
        Ok(Self {
            raw: raw.to_string(),
            segments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_static_param_and_catch_all() {
        let p = PathPattern::parse("/api/users/:id/*rest").unwrap();
        assert_eq!(
            p.segments,
            vec![
                Segment::Static("api".into()),
                Segment::Static("users".into()),
                Segment::Param("id".into()),
                Segment::CatchAll("rest".into()),
            ]
        );
        assert_eq!(
            PathPattern::parse("/").unwrap().segments,
            vec![Segment::Static(String::new())]
        );
    }

    #[test]
    fn rejects_bad_patterns_with_a_reason() {
        for (bad, why) in [
            ("users", "must start with '/'"),
            ("/users/:", "needs a name"),
            ("/files/*", "needs a name"),
            ("/a/*rest/b", "must be the last segment"),
            ("/a/x:id", "may only start a whole segment"),
            ("/a/:id/:id", "used twice"),
            ("/a b", "whitespace"),
            ("/a?x=1", "'?'"),
        ] {
            let err = PathPattern::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
