//! Structural checks of a [`DrasiServerConfig`]: everything that needs no
//! plugin and no query parser, with drasi-server's rules and DRaaS's own
//! (paths that stay inside the server's directory, combinations that cannot
//! start). References to the environment are resolved with the instance's
//! environment first, so a value is checked as the server will see it.
//! Plugin configurations and query text are checked by `draas-drasi`.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Component, Path};

use serde_json::Value;

use super::ports::listening_ports;
use super::{
    reference_in, ConfigValue, DrasiServerConfig, LibInstance, NamedPluginConfig, ResolveError,
    LOG_LEVELS,
};

/// One problem found in a configuration (or, in a list of warnings, one
/// thing the user should know about it).
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

/// What a configuration is checked against: the environment its
/// references resolve in, and the id the server gets when the file names
/// none.
pub struct ValidationContext<'a> {
    /// Looks up an environment variable of the server.
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    /// The lib instance id used when the file has none.
    pub default_id: &'a str,
}

/// Longest component id accepted.
const MAX_COMPONENT_ID_LEN: usize = 256;

/// Common keys that drasi-server rejects in snake_case, with the right name.
const SNAKE_CASE_KEYS: [(&str, &str); 3] = [
    ("auto_start", "autoStart"),
    ("bootstrap_provider", "bootstrapProvider"),
    ("identity_provider", "identityProvider"),
];

/// Checks ids, references, the API address, the log level, resolved
/// environment references and listened ports. Returns every issue found
/// (empty when the structure is sound), in document order.
pub fn validate_structure(config: &DrasiServerConfig, ctx: &ValidationContext) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let lookup = ctx.lookup;
    let resolve_issue = |path: &str, e: ResolveError| ConfigIssue::new(path, resolve_message(e));

    if let Some(id) = &config.id {
        match id.resolve(lookup, "text") {
            Ok(id) if id.trim().is_empty() => {
                issues.push(ConfigIssue::new("/id", "id must not be empty"))
            }
            Ok(_) => {}
            Err(e) => issues.push(resolve_issue("/id", e)),
        }
    }
    if let Some(host) = &config.host {
        match host.resolve(lookup, "a host") {
            Ok(host) if !is_valid_host(&host) => issues.push(ConfigIssue::new(
                "/host",
                format!("invalid host '{host}': expected 0.0.0.0, an IP address or a hostname"),
            )),
            Ok(_) => {}
            Err(e) => issues.push(resolve_issue("/host", e)),
        }
    }
    if let Some(port) = &config.port {
        match port.resolve(lookup, "a port number (1-65535)") {
            Ok(0) => issues.push(ConfigIssue::new(
                "/port",
                "port 0 is not allowed: leave `port` out to let DRaaS choose one",
            )),
            Ok(_) => {}
            Err(e) => issues.push(resolve_issue("/port", e)),
        }
    }
    match config.log_level.resolve(lookup, "a log level") {
        Ok(level) if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) => {
            issues.push(ConfigIssue::new(
                "/logLevel",
                format!(
                    "invalid logLevel '{level}': expected one of {}",
                    LOG_LEVELS.join(", ")
                ),
            ))
        }
        Ok(_) => {}
        Err(e) => issues.push(resolve_issue("/logLevel", e)),
    }

    // Lib instances: ids unique, one secret store for the process.
    let libs = config.lib_instances();
    let mut lib_ids: HashMap<String, String> = HashMap::new();
    let mut secret_store: Option<(String, &super::PluginConfig)> = None;
    for lib in &libs {
        let base = lib.pointer();
        if let Some(index) = lib.index {
            let id = match lib.id {
                None => Some(format!("{}-{index}", ctx.default_id)),
                Some(id) => match id.resolve(lookup, "text") {
                    Ok(id) => Some(id),
                    Err(e) => {
                        issues.push(resolve_issue(&format!("{base}/id"), e));
                        None
                    }
                },
            };
            if let Some(id) = id {
                if let Some(problem) = component_id_problem(&id) {
                    issues.push(ConfigIssue::new(format!("{base}/id"), problem));
                } else if let Some(first) = lib_ids.get(&id) {
                    issues.push(ConfigIssue::new(
                        format!("{base}/id"),
                        format!("duplicate instance id '{id}': already used at {first}"),
                    ));
                } else {
                    lib_ids.insert(id, base.clone());
                }
            }
        }
        if let Some(store) = lib.secret_store {
            match &secret_store {
                Some((first, seen)) if *seen != store => issues.push(ConfigIssue::new(
                    format!("{base}/secretStore"),
                    format!(
                        "a server has one secret store: this one differs from the one at {first}"
                    ),
                )),
                Some(_) => {}
                None => secret_store = Some((format!("{base}/secretStore"), store)),
            }
        }
        lib_issues(lib, ctx, &mut issues);
    }

    // One process cannot listen twice on a port.
    let mut ports: HashMap<u16, String> = HashMap::new();
    for listening in listening_ports(config, lookup) {
        if let Some(first) = ports.get(&listening.port) {
            let hint = if listening.defaulted {
                format!(
                    " (the plugin's default: set `port` at {} to another port)",
                    listening.pointer
                )
            } else {
                String::new()
            };
            issues.push(ConfigIssue::new(
                listening.pointer.clone(),
                format!(
                    "port {} of {} is also used by {first}{hint}",
                    listening.port, listening.owner
                ),
            ));
        } else {
            ports.insert(listening.port, listening.owner);
        }
    }

    issues
}

/// The checks of one lib instance.
fn lib_issues(lib: &LibInstance, ctx: &ValidationContext, issues: &mut Vec<ConfigIssue>) {
    let base = lib.pointer();
    let lookup = ctx.lookup;
    let has_secret_store = lib.secret_store.is_some();

    for (name, value) in [
        (
            "defaultPriorityQueueCapacity",
            lib.default_priority_queue_capacity,
        ),
        (
            "defaultDispatchBufferCapacity",
            lib.default_dispatch_buffer_capacity,
        ),
    ] {
        if let Some(value) = value {
            match value.resolve(lookup, "a capacity (a whole number)") {
                Ok(0) => issues.push(ConfigIssue::new(
                    format!("{base}/{name}"),
                    "a capacity of 0 would block every event",
                )),
                Ok(_) => {}
                Err(e) => issues.push(ConfigIssue::new(
                    format!("{base}/{name}"),
                    resolve_message(e),
                )),
            }
        }
    }
    if let Some(store) = lib.state_store {
        if store.kind != "redb" {
            issues.push(ConfigIssue::new(
                format!("{base}/stateStore/kind"),
                format!(
                    "unknown stateStore kind '{}': the only kind is redb ({{kind: redb, path: ./data/state.redb}})",
                    store.kind
                ),
            ));
        }
        match store.path.resolve(lookup, "a path") {
            Ok(path) => {
                if let Some(problem) = inner_path_problem(&path) {
                    issues.push(ConfigIssue::new(format!("{base}/stateStore/path"), problem));
                }
            }
            Err(e) => issues.push(ConfigIssue::new(
                format!("{base}/stateStore/path"),
                resolve_message(e),
            )),
        }
    }
    if let Some(store) = lib.secret_store {
        if store.kind.trim().is_empty() {
            issues.push(ConfigIssue::new(
                format!("{base}/secretStore/kind"),
                "kind must not be empty",
            ));
        }
        reference_issues(
            &format!("{base}/secretStore"),
            &Value::Object(store.properties.clone()),
            lookup,
            true,
            issues,
        );
    }

    let named = |list: &[NamedPluginConfig], what: &str, issues: &mut Vec<ConfigIssue>| {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, provider) in list.iter().enumerate() {
            let path = format!("{base}/{what}/{i}");
            if provider.kind.trim().is_empty() {
                issues.push(ConfigIssue::new(
                    format!("{path}/kind"),
                    "kind must not be empty",
                ));
            }
            if let Some(first) = seen.insert(provider.id.as_str(), i) {
                issues.push(ConfigIssue::new(
                    format!("{path}/id"),
                    format!(
                        "duplicate id '{}': already used at {base}/{what}/{first}",
                        provider.id
                    ),
                ));
            }
            reference_issues(
                &path,
                &Value::Object(provider.properties.clone()),
                lookup,
                has_secret_store,
                issues,
            );
        }
    };
    named(lib.bootstrap_providers, "bootstrapProviders", issues);
    named(lib.identity_providers, "identityProviders", issues);
    for (i, provider) in lib.identity_providers.iter().enumerate() {
        if provider.kind == "password" {
            for field in ["username", "password"] {
                let path = format!("{base}/identityProviders/{i}/{field}");
                match provider.properties.get(field) {
                    None => issues.push(ConfigIssue::new(
                        path,
                        format!("the password identity provider needs `{field}`"),
                    )),
                    Some(value) => {
                        if serde_json::from_value::<ConfigValue<String>>(value.clone()).is_err() {
                            issues.push(ConfigIssue::new(path, "must be text or a reference"));
                        }
                    }
                }
            }
        }
    }

    // Component ids share one namespace per lib instance: its graph.
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
    let identity_exists = |id: &str| lib.identity_providers.iter().any(|p| p.id == id);

    for (i, source) in lib.sources.iter().enumerate() {
        let path = format!("{base}/sources/{i}");
        claim(&source.id, path.clone(), issues);
        if source.kind.trim().is_empty() {
            issues.push(ConfigIssue::new(
                format!("{path}/kind"),
                "kind must not be empty",
            ));
        }
        snake_case_issues(&path, &source.properties, issues);
        reference_issues(
            &path,
            &Value::Object(source.properties.clone()),
            lookup,
            has_secret_store,
            issues,
        );
        if let Some(provider) = &source.bootstrap_provider {
            match lib.bootstrap_of(source) {
                Some(Err(message)) => issues.push(ConfigIssue::new(
                    format!("{path}/bootstrapProvider"),
                    message,
                )),
                Some(Ok(_)) => {
                    if let Value::Object(inline) = provider {
                        let mut own = inline.clone();
                        own.remove("kind");
                        reference_issues(
                            &format!("{path}/bootstrapProvider"),
                            &Value::Object(own),
                            lookup,
                            has_secret_store,
                            issues,
                        );
                    }
                }
                None => {}
            }
        }
        if let Some(idp) = &source.identity_provider {
            if !identity_exists(idp) {
                issues.push(ConfigIssue::new(
                    format!("{path}/identityProvider"),
                    format!(
                        "source '{}' names identity provider '{idp}', which is not one of identityProviders",
                        source.id
                    ),
                ));
            }
        }
    }

    for (i, query) in lib.queries.iter().enumerate() {
        let path = format!("{base}/queries/{i}");
        claim(&query.id, path.clone(), issues);
        if query.query.trim().is_empty() {
            issues.push(ConfigIssue::new(
                format!("{path}/query"),
                "query text must not be empty",
            ));
        }
        let middleware: Vec<&str> = query.middleware.iter().map(|m| m.name.as_str()).collect();
        for (j, sub) in query.sources.iter().enumerate() {
            if !lib.sources.iter().any(|s| s.id == sub.source_id) {
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

    for (i, reaction) in lib.reactions.iter().enumerate() {
        let path = format!("{base}/reactions/{i}");
        claim(&reaction.id, path.clone(), issues);
        if reaction.kind.trim().is_empty() {
            issues.push(ConfigIssue::new(
                format!("{path}/kind"),
                "kind must not be empty",
            ));
        }
        snake_case_issues(&path, &reaction.properties, issues);
        reference_issues(
            &path,
            &Value::Object(reaction.properties.clone()),
            lookup,
            has_secret_store,
            issues,
        );
        for (j, query_id) in reaction.queries.iter().enumerate() {
            match lib.queries.iter().find(|q| &q.id == query_id) {
                None => issues.push(ConfigIssue::new(
                    format!("{path}/queries/{j}"),
                    format!(
                        "reaction '{}' references query '{query_id}', which does not exist",
                        reaction.id
                    ),
                )),
                // The reaction would subscribe to a query that never runs:
                // drasi-server fails its start ("not ready for
                // subscriptions"), everywhere.
                Some(query) if reaction.auto_start && !query.auto_start => {
                    issues.push(ConfigIssue::new(
                        format!("{path}/queries/{j}"),
                        format!(
                            "reaction '{}' starts with the server but query '{query_id}' does not \
                             (a query's autoStart defaults to false in drasi-server): set \
                             `autoStart: true` on query '{query_id}', or `autoStart: false` on \
                             reaction '{}'",
                            reaction.id, reaction.id
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(idp) = &reaction.identity_provider {
            if !identity_exists(idp) {
                issues.push(ConfigIssue::new(
                    format!("{path}/identityProvider"),
                    format!(
                        "reaction '{}' names identity provider '{idp}', which is not one of identityProviders",
                        reaction.id
                    ),
                ));
            }
        }
    }
}

/// Issues for the references in a plugin's configuration: a variable that
/// is unset without a default (the server would fail to create the
/// component), a secret without a secret store.
fn reference_issues(
    path: &str,
    value: &Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    has_secret_store: bool,
    issues: &mut Vec<ConfigIssue>,
) {
    match reference_in(value) {
        Err(message) => {
            issues.push(ConfigIssue::new(path, message));
            return;
        }
        Ok(Some(ConfigValue::Env(reference))) => {
            if lookup(&reference.name).is_none() && reference.default.is_none() {
                issues.push(ConfigIssue::new(
                    path,
                    format!(
                        "environment variable '{}' is not set and has no default: add it to the \
                         instance's environment (serverConfiguration.environment) or write \
                         ${{{}:-default}}",
                        reference.name, reference.name
                    ),
                ));
            }
            return;
        }
        Ok(Some(ConfigValue::Secret { name })) => {
            if !has_secret_store {
                issues.push(ConfigIssue::new(
                    path,
                    format!(
                        "secret '{name}' needs a secretStore; or take it from the instance's \
                         environment with ${{{name}}}"
                    ),
                ));
            }
            return;
        }
        Ok(Some(ConfigValue::Static(()))) | Ok(None) => {}
    }
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                reference_issues(
                    &format!("{path}/{escaped}"),
                    inner,
                    lookup,
                    has_secret_store,
                    issues,
                );
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                reference_issues(
                    &format!("{path}/{i}"),
                    inner,
                    lookup,
                    has_secret_store,
                    issues,
                );
            }
        }
        _ => {}
    }
}

/// The message of a failed resolution of a server-level value.
fn resolve_message(e: ResolveError) -> String {
    match e {
        ResolveError::Missing(name) => format!(
            "environment variable '{name}' is not set and has no default: add it to the \
             instance's environment (serverConfiguration.environment) or write ${{{name}:-default}}"
        ),
        ResolveError::Secret(name) => format!(
            "secret '{name}': drasi-server resolves secrets in plugin fields only; take it from \
             the instance's environment with ${{{name}}}"
        ),
        other => other.to_string(),
    }
}

/// Why `path` (a file of the server) is refused: DRaaS keeps every file of
/// a server inside its own directory (the instance's directory, volume or
/// pod), so a path is relative and never climbs out.
pub fn inner_path_problem(path: &str) -> Option<String> {
    if path.trim().is_empty() {
        return Some("the path must not be empty".to_string());
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Some(format!(
            "'{path}' is absolute: a server's files stay in its own directory; use a relative \
             path such as ./data/state.redb"
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Some(format!(
            "'{path}' climbs out of the server's directory with '..'; use a path inside it, \
             such as ./data/state.redb"
        ));
    }
    None
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
    if id == "." || id == ".." {
        return Some(format!("id '{id}' would name a directory"));
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
