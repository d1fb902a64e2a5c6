//! Rule evaluation, exactly as Micro v3's `VerifyAccess`.
//!
//! The rules that match a resource (type `*` or the resource's; name `*` or the resource's;
//! endpoint `*`, the resource's, or a `a/b/*` prefix of a path-like endpoint; all
//! case-insensitive) are walked highest priority first (stable, so equal priorities keep
//! their order by id). A public rule (scope `""`) decides for everyone, even without an
//! account. Without an account nothing else applies. A rule whose scope is not `+` decides
//! nothing but "forbidden" for an account of another namespace. Scope `*` (any account of the
//! namespace), `+` (any account of any namespace), or a scope the account holds decides with
//! the rule's access. Nothing decided: forbidden.

use micro_state::views::auth::Rule;

pub const GRANTED: i32 = 1;
pub const DENIED: i32 = 2;

/// A resource being accessed: `type:name:endpoint`, e.g. `service:store:Store.Read`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub kind: String,
    pub name: String,
    pub endpoint: String,
}

impl Resource {
    pub fn service(name: &str, endpoint: &str) -> Resource {
        Resource {
            kind: "service".into(),
            name: name.into(),
            endpoint: endpoint.into(),
        }
    }
}

/// Who is asking: the parts of an account the rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject<'a> {
    pub issuer: &'a str,
    pub scopes: &'a [String],
}

/// A namespace's rules, normalised once (lowercase, ordered) for fast evaluation.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

fn lower(r: &Rule) -> Rule {
    Rule {
        id: r.id.clone(),
        scope: r.scope.clone(),
        resource_type: r.resource_type.to_lowercase(),
        resource_name: r.resource_name.to_lowercase(),
        resource_endpoint: r.resource_endpoint.to_lowercase(),
        access: r.access,
        priority: r.priority,
    }
}

impl RuleSet {
    /// From the rules as listed (by id).
    pub fn new(rules: &[Rule]) -> RuleSet {
        let mut rules: Vec<Rule> = rules.iter().map(lower).collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        RuleSet { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `who` (None: no account) may access `res` in namespace `ns`.
    pub fn allows(&self, who: Option<&Subject<'_>>, ns: &str, res: &Resource) -> bool {
        let kind = res.kind.to_lowercase();
        let name = res.name.to_lowercase();
        let endpoint = res.endpoint.to_lowercase();
        for rule in &self.rules {
            if !(rule.resource_type == "*" || rule.resource_type == kind) {
                continue;
            }
            if !(rule.resource_name == "*" || rule.resource_name == name) {
                continue;
            }
            if !endpoint_matches(&rule.resource_endpoint, &endpoint) {
                continue;
            }
            if rule.scope.is_empty() {
                return rule.access == GRANTED;
            }
            let Some(acc) = who else { continue };
            if rule.scope != "+" && acc.issuer != ns {
                return false;
            }
            let holds = rule.scope == "*"
                || rule.scope == "+"
                || acc
                    .scopes
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(&rule.scope));
            if holds {
                if rule.access == DENIED {
                    return false;
                }
                if rule.access == GRANTED {
                    return true;
                }
            }
        }
        false
    }
}

/// `pattern` (lowercase) covers `endpoint` (lowercase): `*`, the endpoint itself, or `p/*`
/// for a path prefix `p` of a path-like endpoint.
fn endpoint_matches(pattern: &str, endpoint: &str) -> bool {
    if pattern == "*" || pattern == endpoint {
        return true;
    }
    let Some(prefix) = pattern.strip_suffix("/*") else {
        return false;
    };
    if !endpoint.contains('/') {
        return false;
    }
    // `p/*` is one of Micro's wildcards when `p` is the endpoint cut at a `/` (or the whole
    // endpoint: Micro's loop includes `endpoint/*`).
    endpoint == prefix
        || (endpoint.starts_with(prefix) && endpoint.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Parses the CLI's `type:name:endpoint`.
pub fn parse_resource(s: &str) -> Result<Resource, String> {
    let mut parts = s.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(k), Some(n), Some(e)) if !k.is_empty() && !n.is_empty() && !e.is_empty() => {
            Ok(Resource {
                kind: k.into(),
                name: n.into(),
                endpoint: e.into(),
            })
        }
        _ => Err(format!(
            "{s:?} is not type:name:endpoint (e.g. service:store:Store.Read, or *:*:*)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Micro v3's `VerifyAccess`, written the way Micro wrote it: build the list of endpoint
    /// wildcards, filter with case-insensitive `include`, stable-sort by priority, walk.
    fn reference(rules: &[Rule], acc: Option<(&str, &[String])>, ns: &str, res: &Resource) -> bool {
        let include =
            |set: &[String], v: &str| set.iter().any(|s| s.to_lowercase() == v.to_lowercase());
        let types = vec!["*".to_string(), res.kind.clone()];
        let names = vec!["*".to_string(), res.name.clone()];
        let mut endpoints = vec!["*".to_string(), res.endpoint.clone()];
        let comps: Vec<&str> = res.endpoint.split('/').collect();
        if comps.len() > 1 {
            for i in 1..=comps.len() {
                endpoints.push(format!("{}/*", comps[..i].join("/")));
            }
        }
        let mut filtered: Vec<&Rule> = rules
            .iter()
            .filter(|r| {
                include(&types, &r.resource_type)
                    && include(&names, &r.resource_name)
                    && include(&endpoints, &r.resource_endpoint)
            })
            .collect();
        filtered.sort_by_key(|r| std::cmp::Reverse(r.priority));
        for r in filtered {
            if r.scope.is_empty() && r.access == DENIED {
                return false;
            } else if r.scope.is_empty() && r.access == GRANTED {
                return true;
            }
            let Some((issuer, scopes)) = acc else {
                continue;
            };
            if r.scope != "+" && issuer != ns {
                return false;
            }
            if (r.scope == "*" || r.scope == "+") && r.access == DENIED {
                return false;
            } else if (r.scope == "*" || r.scope == "+") && r.access == GRANTED {
                return true;
            }
            if include(scopes, &r.scope) && r.access == DENIED {
                return false;
            } else if include(scopes, &r.scope) && r.access == GRANTED {
                return true;
            }
        }
        false
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_string()),
            Just("store".to_string()),
            Just("Store".to_string()),
            Just("service".to_string()),
            Just("Store.Read".to_string()),
            Just("store.read".to_string()),
            Just("Store.Write".to_string()),
            Just("/foo/*".to_string()),
            Just("/foo/bar".to_string()),
            Just("/foo/bar/*".to_string()),
            Just("/*".to_string()),
            Just("/foo".to_string()),
        ]
    }

    fn scope() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("*".to_string()),
            Just("+".to_string()),
            Just("admin".to_string()),
            Just("Admin".to_string()),
            Just("reader".to_string()),
        ]
    }

    fn rule() -> impl Strategy<Value = Rule> {
        (word(), word(), word(), scope(), 1..=2i32, -2..3i32).prop_map(
            |(t, n, e, scope, access, priority)| Rule {
                id: String::new(),
                scope,
                resource_type: t,
                resource_name: n,
                resource_endpoint: e,
                access,
                priority,
            },
        )
    }

    proptest! {
        #[test]
        fn matches_micros_verify_access(
            rules in proptest::collection::vec(rule(), 0..8),
            has_account in any::<bool>(),
            issuer in prop_oneof![Just("a"), Just("b")],
            scopes in proptest::collection::vec(scope(), 0..3),
            ns in prop_oneof![Just("a"), Just("b")],
            kind in word(), name in word(), endpoint in word(),
        ) {
            let res = Resource { kind, name, endpoint };
            let acc = has_account.then_some((issuer, scopes.as_slice()));
            let want = reference(&rules, acc, ns, &res);
            let subject = acc.map(|(issuer, scopes)| Subject { issuer, scopes });
            let got = RuleSet::new(&rules).allows(subject.as_ref(), ns, &res);
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn the_issue_examples() {
        let read = Rule {
            id: "read".into(),
            scope: "*".into(),
            resource_type: "service".into(),
            resource_name: "store".into(),
            resource_endpoint: "Store.Read".into(),
            access: GRANTED,
            priority: 0,
        };
        let set = RuleSet::new(&[read]);
        let scopes = vec![];
        let a = Subject {
            issuer: "team-a",
            scopes: &scopes,
        };
        assert!(set.allows(
            Some(&a),
            "team-a",
            &Resource::service("store", "store.read")
        ));
        assert!(!set.allows(
            Some(&a),
            "team-a",
            &Resource::service("store", "Store.Write")
        ));
        assert!(!set.allows(
            Some(&a),
            "team-b",
            &Resource::service("store", "Store.Read")
        ));
        assert!(!set.allows(None, "team-a", &Resource::service("store", "Store.Read")));
        assert!(!RuleSet::default().allows(Some(&a), "team-a", &Resource::service("x", "Y.Z")));
    }

    #[test]
    fn resources_parse_from_the_cli_form() {
        assert_eq!(
            parse_resource("service:store:Store.Read").unwrap(),
            Resource::service("store", "Store.Read")
        );
        assert_eq!(parse_resource("*:*:*").unwrap().endpoint, "*");
        assert!(parse_resource("service:store").is_err());
        assert!(parse_resource("::").is_err());
    }
}
