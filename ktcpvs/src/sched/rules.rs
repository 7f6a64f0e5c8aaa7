//! Content-based scheduling (thesis §6.3.6): `[[service.rule]]` entries,
//! tried in order, route a request to a named *server set*; a request no
//! rule matches goes to the `default` set.
//!
//! A server joins sets with `sets = ["images", ...]` on its
//! `[[service.server]]`; a server without `sets` is in `default` (list
//! `"default"` next to other names to keep it there too). A rule holds any
//! of `path_prefix`, `path_suffix`, `path_regex` (on the target: the path
//! without the query), `host` (case-insensitive, port ignored) and `method`
//! (exact); all given conditions must hold. `set` names the destination.
//!
//! A rule's outcome is an [`Exclude`] of the servers *outside* its set,
//! computed when the configuration is loaded; the proxy folds it into the
//! exclusions of the decision, so every scheduler works unchanged inside
//! the set — lblc and lblcr keep their locality per target within it (the
//! thesis' improved content-based scheduling). Matching allocates nothing.

use std::collections::BTreeSet;

use crate::config::{field_err, ConfigError, RawRule, ServerConfig};

use super::Exclude;

/// The name of the set of servers without `sets`.
pub const DEFAULT_SET: &str = "default";

#[derive(Debug, Clone)]
struct Rule {
    prefix: Option<Box<[u8]>>,
    suffix: Option<Box<[u8]>>,
    regex: Option<regex::bytes::Regex>,
    host: Option<Box<[u8]>>,
    method: Option<Box<[u8]>>,
    set: String,
    outside: Exclude,
}

/// The checked rules of one service.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    default_outside: Exclude,
}

/// What a request is matched on (slices of the client's buffer).
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub path: &'a [u8],
    pub host: &'a [u8],
    pub method: &'a [u8],
}

/// The servers not in `set` (as an exclusion mask), and how many are.
fn outside_of(servers: &[ServerConfig], set: &str) -> (Exclude, usize) {
    let mut e = Exclude::NONE;
    let mut members = 0;
    for (j, s) in servers.iter().enumerate() {
        let member = if s.sets.is_empty() {
            set == DEFAULT_SET
        } else {
            s.sets.iter().any(|n| n == set)
        };
        if member {
            members += 1;
        } else {
            e.add(j);
        }
    }
    (e, members)
}

impl Rules {
    /// The same rules for a changed server list (runtime administration):
    /// the masks are by index, so they are recomputed from the set names.
    /// A set left without servers excludes everything (503), as a
    /// configuration could not.
    pub fn remap(&self, servers: &[ServerConfig]) -> Rules {
        Rules {
            rules: self
                .rules
                .iter()
                .map(|r| Rule {
                    outside: outside_of(servers, &r.set).0,
                    ..r.clone()
                })
                .collect(),
            default_outside: outside_of(servers, DEFAULT_SET).0,
        }
    }

    /// Checks `[[service.rule]]` against the servers' sets; `field` is the
    /// service's path (`service[0]`) for error messages.
    pub fn build(
        raw: Vec<RawRule>,
        servers: &[ServerConfig],
        field: &str,
    ) -> Result<Rules, ConfigError> {
        let outside = |set: &str| outside_of(servers, set);
        let (default_outside, n) = outside(DEFAULT_SET);
        if n == 0 {
            return Err(field_err(
                format!("{field}.server"),
                "no server is in the default set (give a server no `sets`, or list \"default\" in its sets)",
            ));
        }
        let known: BTreeSet<&str> = servers
            .iter()
            .flat_map(|s| s.sets.iter().map(String::as_str))
            .collect();
        let mut rules = Vec::with_capacity(raw.len());
        for (k, r) in raw.into_iter().enumerate() {
            let f = |name: &str| format!("{field}.rule[{k}].{name}");
            let set = r
                .set
                .ok_or_else(|| field_err(f("set"), "is required (the server set to use)"))?;
            let (out, members) = outside(&set);
            if members == 0 {
                let names: Vec<&str> = known.iter().copied().collect();
                return Err(field_err(
                    f("set"),
                    format!(
                        "no server is in set {set:?} (sets named by servers: default{}{})",
                        if names.is_empty() { "" } else { ", " },
                        names.join(", ")
                    ),
                ));
            }
            let regex = match r.path_regex {
                None => None,
                Some(p) => Some(
                    regex::bytes::RegexBuilder::new(&p)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| field_err(f("path_regex"), format!("invalid regex: {e}")))?,
                ),
            };
            let host = r.host.map(|h| h.to_ascii_lowercase().into_bytes().into());
            let method = r.method.map(|m| m.into_bytes().into());
            let rule = Rule {
                prefix: r.path_prefix.map(|p| p.into_bytes().into()),
                suffix: r.path_suffix.map(|p| p.into_bytes().into()),
                regex,
                host,
                method,
                set,
                outside: out,
            };
            if rule.prefix.is_none()
                && rule.suffix.is_none()
                && rule.regex.is_none()
                && rule.host.is_none()
                && rule.method.is_none()
            {
                return Err(field_err(
                    f("set"),
                    "a rule needs at least one of path_prefix, path_suffix, path_regex, host, method",
                ));
            }
            rules.push(rule);
        }
        Ok(Rules {
            rules,
            default_outside,
        })
    }

    /// The servers a request may not go to: those outside the set of the
    /// first matching rule, or outside the default set.
    #[inline]
    pub fn route(&self, req: &Subject<'_>) -> Exclude {
        for r in &self.rules {
            if r.matches(req) {
                return r.outside;
            }
        }
        self.default_outside
    }

    /// The set name a request is routed to (logs and tests).
    pub fn set_of(&self, req: &Subject<'_>) -> &str {
        self.rules
            .iter()
            .find(|r| r.matches(req))
            .map_or(DEFAULT_SET, |r| &r.set)
    }
}

impl Rule {
    #[inline]
    fn matches(&self, req: &Subject<'_>) -> bool {
        if let Some(m) = &self.method {
            if req.method != &m[..] {
                return false;
            }
        }
        if let Some(h) = &self.host {
            // The Host value without its port.
            let host = match req.host.iter().rposition(|&b| b == b':') {
                Some(i) if !req.host.ends_with(b"]") => &req.host[..i],
                _ => req.host,
            };
            if !host.eq_ignore_ascii_case(h) {
                return false;
            }
        }
        if let Some(p) = &self.prefix {
            if !req.path.starts_with(p) {
                return false;
            }
        }
        if let Some(p) = &self.suffix {
            if !req.path.ends_with(p) {
                return false;
            }
        }
        if let Some(re) = &self.regex {
            if !re.is_match(req.path) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CFG: &str = r#"
        [[service]]
        listen = "127.0.0.1:8080"
        scheduler = "lblc"
        [[service.server]]
        address = "127.0.0.1:9001"
        [[service.server]]
        address = "127.0.0.1:9002"
        sets = ["images", "default"]
        [[service.server]]
        address = "127.0.0.1:9003"
        sets = ["images"]
        [[service.server]]
        address = "127.0.0.1:9004"
        sets = ["cgi"]
        [[service.rule]]
        path_prefix = "/img/"
        set = "images"
        [[service.rule]]
        path_suffix = ".cgi"
        method = "POST"
        set = "cgi"
        [[service.rule]]
        path_regex = '^/[a-z]+/\d+\.png$'
        set = "images"
        [[service.rule]]
        host = "Static.Example.com"
        set = "images"
    "#;

    fn subj<'a>(method: &'a str, path: &'a str, host: &'a str) -> Subject<'a> {
        Subject {
            path: path.as_bytes(),
            host: host.as_bytes(),
            method: method.as_bytes(),
        }
    }

    #[test]
    fn rules_route_to_their_sets_in_order() {
        let c = Config::from_toml(CFG).unwrap();
        let r = &c.services[0].rules;
        let ex = |m, p, h| r.route(&subj(m, p, h));
        assert_eq!(ex("GET", "/img/a.jpg", "x"), Exclude::bits(0b1001));
        assert_eq!(r.set_of(&subj("GET", "/img/a.jpg", "x")), "images");
        assert_eq!(ex("POST", "/x/run.cgi", "x"), Exclude::bits(0b0111));
        // both conditions must hold
        assert_eq!(ex("GET", "/x/run.cgi", "x"), Exclude::bits(0b1100));
        assert_eq!(ex("GET", "/abc/42.png", "x"), Exclude::bits(0b1001));
        assert_eq!(ex("GET", "/abc/x42.png", "x"), Exclude::bits(0b1100));
        assert_eq!(
            ex("GET", "/", "static.example.COM:8080"),
            Exclude::bits(0b1001)
        );
        assert_eq!(ex("GET", "/", "other.example.com"), Exclude::bits(0b1100));
        assert_eq!(r.set_of(&subj("GET", "/", "")), DEFAULT_SET);
    }

    #[test]
    fn errors_name_the_rule_field() {
        let err = |t: &str| Config::from_toml(t).unwrap_err().to_string();
        let e = err(&CFG.replace("set = \"cgi\"", "set = \"nope\""));
        assert!(e.starts_with("service[0].rule[1].set:"), "{e}");
        let e = err(&CFG.replace(r"\d+", "(("));
        assert!(e.starts_with("service[0].rule[2].path_regex:"), "{e}");
        let e = err(&CFG.replace("path_prefix = \"/img/\"\n", ""));
        assert!(e.starts_with("service[0].rule[0].set:"), "{e}");
        let e = err(&CFG
            .replace("sets = [\"images\", \"default\"]", "sets = [\"images\"]")
            .replace(
                "address = \"127.0.0.1:9001\"",
                "address = \"127.0.0.1:9001\"\nsets = [\"x\"]",
            ));
        assert!(e.starts_with("service[0].server:"), "{e}");
    }
}
