//! Structural checks of a [`DrasiServerConfig`]: everything that needs no
//! plugin and no query parser. Plugin configuration and query text are checked
//! by `draas-drasi`, which knows the plugins.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use super::{DrasiServerConfig, LOG_LEVELS};

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// JSON Pointer (RFC 6901) to the offending value, e.g. `/sources/0/port`.
    pub path: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl ConfigIssue {
    /// An issue at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Longest component id accepted.
const MAX_COMPONENT_ID_LEN: usize = 256;

/// Common keys that drasi-server rejects in snake_case, with the right name.
const SNAKE_CASE_KEYS: [(&str, &str); 3] = [
    ("auto_start", "autoStart"),
    ("bootstrap_provider", "bootstrapProvider"),
    ("identity_provider", "identityProvider"),
];

/// Checks ids, references, the API address and the log level. Returns every
/// issue found (empty when the structure is sound).
pub fn validate_structure(config: &DrasiServerConfig) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();

    if let Some(id) = &config.id {
        if id.trim().is_empty() {
            issues.push(ConfigIssue::new("/id", "id must not be empty"));
        }
    }
    if !is_valid_host(&config.host) {
        issues.push(ConfigIssue::new(
            "/host",
            format!(
                "invalid host '{}': expected 0.0.0.0, an IP address or a hostname",
                config.host
            ),
        ));
    }
    if config.port == 0 {
        issues.push(ConfigIssue::new(
            "/port",
            "port 0 is not allowed: the API needs a fixed port",
        ));
    }
    if !LOG_LEVELS.contains(&config.log_level.to_ascii_lowercase().as_str()) {
        issues.push(ConfigIssue::new(
            "/logLevel",
            format!(
                "invalid logLevel '{}': expected one of {}",
                config.log_level,
                LOG_LEVELS.join(", ")
            ),
        ));
    }

    // One process cannot listen twice on a port.
    let mut ports: HashMap<u16, String> = HashMap::new();
    for listening in config.listening_ports() {
        if let Some(first) = ports.get(&listening.port) {
            issues.push(ConfigIssue::new(
                port_path(config, &listening.owner),
                format!(
                    "port {} of {} is also used by {first}",
                    listening.port, listening.owner
                ),
            ));
        } else {
            ports.insert(listening.port, listening.owner);
        }
    }

    // Component ids share one namespace: drasi-lib's component graph.
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut claim = |id: &str, path: String, issues: &mut Vec<ConfigIssue>| {
        if let Some(problem) = component_id_problem(id) {
            issues.push(ConfigIssue::new(format!("{path}/id"), problem));
        } else if let Some(first) = seen.get(id) {
            issues.push(ConfigIssue::new(
                format!("{path}/id"),
                format!("duplicate id '{id}': already used at {first}"),
            ));
        }
        seen.entry(id.to_string()).or_insert(path);
    };

    for (i, source) in config.sources.iter().enumerate() {
        let path = format!("/sources/{i}");
        claim(&source.id, path.clone(), &mut issues);
        if source.kind.trim().is_empty() {
            issues.push(ConfigIssue::new(
                format!("{path}/kind"),
                "kind must not be empty",
            ));
        }
        snake_case_issues(&path, &source.properties, &mut issues);
        match &source.bootstrap_provider {
            None => {}
            Some(serde_json::Value::Object(p)) if p.get("kind").is_some_and(|k| k.is_string()) => {}
            Some(serde_json::Value::String(name)) => issues.push(ConfigIssue::new(
                format!("{path}/bootstrapProvider"),
                format!(
                    "bootstrap provider '{name}' is not defined: shared bootstrapProviders \
                     are not supported, define it inline as {{kind: ...}}"
                ),
            )),
            Some(_) => issues.push(ConfigIssue::new(
                format!("{path}/bootstrapProvider"),
                "bootstrapProvider must be an object with a 'kind'",
            )),
        }
    }

    for (i, query) in config.queries.iter().enumerate() {
        let path = format!("/queries/{i}");
        claim(&query.id, path.clone(), &mut issues);
        if query.query.trim().is_empty() {
            issues.push(ConfigIssue::new(
                format!("{path}/query"),
                "query text must not be empty",
            ));
        }
        let middleware: Vec<&str> = query.middleware.iter().map(|m| m.name.as_str()).collect();
        for (j, sub) in query.sources.iter().enumerate() {
            if !config.sources.iter().any(|s| s.id == sub.source_id) {
                issues.push(ConfigIssue::new(
                    format!("{path}/sources/{j}/sourceId"),
                    format!(
                        "query '{}' references source '{}', which does not exist",
                        query.id, sub.source_id
                    ),
                ));
            }
            for (k, step) in sub.pipeline.iter().enumerate() {
                if !middleware.contains(&step.as_str()) {
                    issues.push(ConfigIssue::new(
                        format!("{path}/sources/{j}/pipeline/{k}"),
                        format!(
                            "pipeline step '{step}' is not a middleware of query '{}'",
                            query.id
                        ),
                    ));
                }
            }
        }
    }

    for (i, reaction) in config.reactions.iter().enumerate() {
        let path = format!("/reactions/{i}");
        claim(&reaction.id, path.clone(), &mut issues);
        if reaction.kind.trim().is_empty() {
            issues.push(ConfigIssue::new(
                format!("{path}/kind"),
                "kind must not be empty",
            ));
        }
        snake_case_issues(&path, &reaction.properties, &mut issues);
        for (j, query_id) in reaction.queries.iter().enumerate() {
            if !config.queries.iter().any(|q| &q.id == query_id) {
                issues.push(ConfigIssue::new(
                    format!("{path}/queries/{j}"),
                    format!(
                        "reaction '{}' references query '{query_id}', which does not exist",
                        reaction.id
                    ),
                ));
            }
        }
    }

    issues
}

/// The JSON Pointer of the port of `owner` (as named by `listening_ports`).
fn port_path(config: &DrasiServerConfig, owner: &str) -> String {
    let position = |ids: Vec<&String>| {
        ids.iter()
            .position(|id| owner.ends_with(&format!("'{id}'")))
    };
    if owner.starts_with("source") {
        if let Some(i) = position(config.sources.iter().map(|s| &s.id).collect()) {
            return format!("/sources/{i}/port");
        }
    } else if owner.starts_with("reaction") {
        if let Some(i) = position(config.reactions.iter().map(|r| &r.id).collect()) {
            return format!("/reactions/{i}/port");
        }
    }
    "/port".to_string()
}

fn snake_case_issues(
    path: &str,
    properties: &serde_json::Map<String, serde_json::Value>,
    issues: &mut Vec<ConfigIssue>,
) {
    for (snake, camel) in SNAKE_CASE_KEYS {
        if properties.contains_key(snake) {
            issues.push(ConfigIssue::new(
                format!("{path}/{snake}"),
                format!("unknown field `{snake}`: did you mean `{camel}`?"),
            ));
        }
    }
}

/// Why `id` cannot name a component, if it cannot. Ids appear in URL paths of
/// the server's API and in file names, so separators and control characters
/// are refused.
fn component_id_problem(id: &str) -> Option<String> {
    if id.trim().is_empty() {
        return Some("id must not be empty".to_string());
    }
    if id.len() > MAX_COMPONENT_ID_LEN {
        return Some(format!(
            "id is longer than {MAX_COMPONENT_ID_LEN} characters"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| c.is_control() || matches!(c, '/' | '\\' | '?' | '#' | '%'))
    {
        return Some(format!(
            "id '{}' contains the character {c:?}",
            id.escape_debug()
        ));
    }
    None
}

/// drasi-server accepts `0.0.0.0`, any IP address, or an RFC 1123 hostname.
fn is_valid_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}
