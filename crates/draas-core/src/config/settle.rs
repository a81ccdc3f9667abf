//! DRaaS's decisions in a configuration it is given.
//!
//! A drasi-server file is taken as the user wrote it, except where DRaaS
//! owns the decision; there the file is settled before it is stored, and
//! each change is said in a warning:
//!
//! - **the API's address**: a host the platform cannot reach (a container
//!   listening on 127.0.0.1 only) becomes `0.0.0.0`; an absent host is the
//!   platform's default;
//! - **listened ports** are the platform's business (reserved on a shared
//!   host, published from a container): a reference such as
//!   `${PORT:-8080}` is resolved in the instance's environment and kept as
//!   the number it gives, and a port left out is chosen (in a container the
//!   next free one from 8081; on a shared host by the control plane, from
//!   its range: [`Settled::to_allocate`]);
//! - **replication slots**: each postgres source gets a slot of its own
//!   (`draas_<instance>_<n>`) unless it names one, so that two instances
//!   reading one database both start and deleting an instance can drop its
//!   slot;
//! - **persistConfig**: DRaaS keeps the file; servers run with
//!   `persistConfig: false`.

use serde_json::Value;

use super::ports::{port_value, ComponentClass, PortRole, PORT_FIELDS};
use super::{ConfigIssue, ConfigValue, DrasiServerConfig, DEFAULT_HOST};
use crate::instance::PlatformType;
use crate::policy::PortPolicy;

/// What settling needs to know.
pub struct SettleContext<'a> {
    /// The instance's id (slot names derive from it).
    pub instance_id: &'a str,
    /// Its platform.
    pub platform: PlatformType,
    /// The API host of a Process instance that names none.
    pub process_host: &'a str,
    /// Looks up a variable of the instance's environment.
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
}

/// A settled configuration.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The configuration as it will be stored.
    pub config: DrasiServerConfig,
    /// Every change DRaaS made, and why.
    pub warnings: Vec<ConfigIssue>,
    /// JSON Pointers of ports the control plane must allocate from its
    /// range (`/port`, or a component whose listened port was left out):
    /// only on platforms whose servers share their host's ports.
    pub to_allocate: Vec<String>,
}

/// The first port tried for a component's listened port left out in a
/// container (the API has 8080).
const PRIVATE_COMPONENT_PORTS_FROM: u16 = 8081;

/// Settles `config` for `ctx`; see the module docs.
pub fn settle(mut config: DrasiServerConfig, ctx: &SettleContext) -> Settled {
    let mut warnings = Vec::new();
    let mut to_allocate = Vec::new();
    let policy = ctx.platform.policy();
    let private = policy.ports == PortPolicy::Private;

    // The API's host.
    match &config.host {
        None => {
            let host = if private {
                policy.default_api_host
            } else {
                ctx.process_host
            };
            config.host = Some(ConfigValue::Static(host.to_string()));
        }
        Some(ConfigValue::Env(reference)) => {
            let reference = reference.clone();
            if let Ok(host) =
                ConfigValue::<String>::Env(reference.clone()).resolve(ctx.lookup, "a host")
            {
                warnings.push(ConfigIssue::new(
                    "/host",
                    format!(
                        "{reference} is '{host}' in the instance's environment and is kept as that: \
                         DRaaS owns the API's address"
                    ),
                ));
                config.host = Some(ConfigValue::Static(host));
            }
        }
        Some(_) => {}
    }
    if private {
        if let Some(ConfigValue::Static(host)) = &config.host {
            if host != DEFAULT_HOST {
                warnings.push(ConfigIssue::new(
                    "/host",
                    format!(
                        "host '{host}' became 0.0.0.0: a {} server is reached from outside its \
                         own network, so its API listens on every interface",
                        ctx.platform
                    ),
                ));
                config.host = Some(ConfigValue::Static(DEFAULT_HOST.to_string()));
            }
        }
    }

    // The API's port.
    match &config.port {
        None | Some(ConfigValue::Static(0)) => match policy.default_api_port {
            Some(port) => config.port = Some(ConfigValue::Static(port)),
            None => to_allocate.push("/port".to_string()),
        },
        Some(ConfigValue::Env(reference)) => {
            let reference = reference.clone();
            if let Ok(port) =
                ConfigValue::<u16>::Env(reference.clone()).resolve(ctx.lookup, "a port")
            {
                warnings.push(pinned("/port", &reference.to_string(), port));
                config.port = Some(ConfigValue::Static(port));
            }
        }
        Some(_) => {}
    }

    // Listened ports of components; postgres replication slots (a new
    // source's is the first of this instance's names no source has).
    let mut used: Vec<u16> = config.static_port().into_iter().collect();
    let mut pending_private: Vec<String> = Vec::new();
    let mut slots_taken: Vec<String> = config
        .all_sources()
        .iter()
        .filter(|(_, s)| s.kind == "postgres")
        .filter_map(|(_, s)| s.properties.get("slotName")?.as_str().map(str::to_string))
        .collect();
    let lib_count = config.lib_instances().len();
    for lib_index in 0..lib_count {
        let (base, sources, reactions) = if config.instances.is_empty() {
            (String::new(), &mut config.sources, &mut config.reactions)
        } else {
            let lib = &mut config.instances[lib_index];
            (
                format!("/instances/{lib_index}"),
                &mut lib.sources,
                &mut lib.reactions,
            )
        };
        let components = sources
            .iter_mut()
            .enumerate()
            .map(|(i, s)| {
                (
                    ComponentClass::Source,
                    format!("{base}/sources/{i}"),
                    s.kind.clone(),
                    &mut s.properties,
                )
            })
            .chain(reactions.iter_mut().enumerate().map(|(i, r)| {
                (
                    ComponentClass::Reaction,
                    format!("{base}/reactions/{i}"),
                    r.kind.clone(),
                    &mut r.properties,
                )
            }));
        for (class, pointer, kind, properties) in components {
            if class == ComponentClass::Source
                && kind == "postgres"
                && !properties.contains_key("slotName")
            {
                let name = (0..)
                    .map(|n| slot_name(ctx.instance_id, n))
                    .find(|name| !slots_taken.contains(name))
                    .unwrap_or_else(|| slot_name(ctx.instance_id, 0));
                slots_taken.push(name.clone());
                warnings.push(ConfigIssue::new(
                    format!("{pointer}/slotName"),
                    format!(
                        "set to '{name}': each instance needs a replication slot of its own \
                             (drasi-server's default, drasi_slot, can serve one server only), and \
                             DRaaS drops it when the instance is deleted"
                    ),
                ));
                properties.insert("slotName".into(), Value::String(name));
            }
            for field in PORT_FIELDS
                .iter()
                .filter(|f| f.class == class && f.kind == kind && f.role == PortRole::Listen)
            {
                let at = format!("{pointer}/{}", field.field);
                match properties.get(field.field) {
                    Some(Value::Number(n)) if n.as_u64() == Some(0) => {
                        properties.remove(field.field);
                    }
                    Some(value) => {
                        if let Ok(Some(ConfigValue::Env(reference))) = super::reference_in(value) {
                            if let Some(port) = port_value(value, ctx.lookup) {
                                warnings.push(pinned(&at, &reference.to_string(), port));
                                properties.insert(field.field.into(), Value::from(port));
                            }
                        }
                    }
                    None => {}
                }
                let given = properties
                    .get(field.field)
                    .and_then(|v| port_value(v, ctx.lookup));
                match given {
                    Some(port) => used.push(port),
                    None => {
                        // Left out: the plugin's default, unless DRaaS
                        // must choose (no default, or a shared host where
                        // a default like the sse reaction's 8080 collides
                        // with every other instance's).
                        if private {
                            match field.default {
                                Some(port) if !used.contains(&port) => used.push(port),
                                _ => pending_private.push(at.clone()),
                            }
                        } else {
                            to_allocate.push(at);
                        }
                    }
                }
            }
        }
    }
    for at in pending_private {
        let port = (PRIVATE_COMPONENT_PORTS_FROM..=u16::MAX)
            .find(|p| !used.contains(p))
            .unwrap_or(PRIVATE_COMPONENT_PORTS_FROM);
        used.push(port);
        warnings.push(ConfigIssue::new(
            at.clone(),
            format!("set to {port}: a port the server listens on, chosen by DRaaS"),
        ));
        set_port(&mut config, &at, port);
    }

    if config.persist_config == Some(true) {
        warnings.push(ConfigIssue::new(
            "/persistConfig",
            "DRaaS keeps this configuration: its servers run with persistConfig: false, so a \
             change made through a server's own API lasts until its next start; change the \
             configuration through DRaaS",
        ));
    }
    if !config.instances.is_empty() {
        let ignored: Vec<&str> = [
            ("id", config.id.is_some()),
            ("sources", !config.sources.is_empty()),
            ("queries", !config.queries.is_empty()),
            ("reactions", !config.reactions.is_empty()),
            ("stateStore", config.state_store.is_some()),
            ("persistIndex", config.persist_index),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        if !ignored.is_empty() {
            warnings.push(ConfigIssue::new(
                "/instances",
                format!(
                    "drasi-server builds only the entries of `instances` when there are any: the \
                     top-level {} are not used; move them into an instance",
                    ignored.join(", ")
                ),
            ));
        }
        for (i, lib) in config.instances.iter().enumerate() {
            if lib.id.is_none() {
                warnings.push(ConfigIssue::new(
                    format!("/instances/{i}"),
                    format!(
                        "has no id: its server gives it '{}-{i}', so its data survives restarts",
                        ctx.instance_id
                    ),
                ));
            }
        }
    }
    Settled {
        config,
        warnings,
        to_allocate,
    }
}

/// Sets the port at `pointer` (`/port`, or a component's `.../port`).
pub fn set_port(config: &mut DrasiServerConfig, pointer: &str, port: u16) {
    if pointer == "/port" {
        config.port = Some(ConfigValue::Static(port));
        return;
    }
    let Some((component, field)) = pointer.rsplit_once('/') else {
        return;
    };
    let mut segments = component.trim_start_matches('/').split('/');
    let (sources, reactions) = match segments.next() {
        Some("instances") => {
            let Some(lib) = segments
                .next()
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| config.instances.get_mut(i))
            else {
                return;
            };
            segments.next().map_or((None, None), |list| match list {
                "sources" => (Some(&mut lib.sources), None),
                _ => (None, Some(&mut lib.reactions)),
            })
        }
        Some("sources") => (Some(&mut config.sources), None),
        Some(_) => (None, Some(&mut config.reactions)),
        None => return,
    };
    let Some(index) = segments.next().and_then(|i| i.parse::<usize>().ok()) else {
        return;
    };
    let properties = match (sources, reactions) {
        (Some(list), _) => list.get_mut(index).map(|s| &mut s.properties),
        (_, Some(list)) => list.get_mut(index).map(|r| &mut r.properties),
        _ => None,
    };
    if let Some(properties) = properties {
        properties.insert(field.to_string(), Value::from(port));
    }
}

/// The replication slot of the `n`-th postgres source of an instance:
/// lowercase letters, digits and `_`, under PostgreSQL's 63 bytes.
pub fn slot_name(instance_id: &str, n: usize) -> String {
    let digits: String = instance_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    // At most 40 characters of the id: 6 + 40 + 1 + digits < 63.
    let tail = &digits[digits.len().saturating_sub(40)..];
    format!("draas_{tail}_{n}")
}

fn pinned(pointer: &str, reference: &str, port: u16) -> ConfigIssue {
    ConfigIssue::new(
        pointer,
        format!(
            "{reference} is {port} in the instance's environment and is kept as {port}: DRaaS \
             reserves and publishes the ports a server listens on, so they are fixed when the \
             configuration is stored"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;

    fn settle_for(text: &str, platform: PlatformType) -> Settled {
        let env = |name: &str| (name == "SSE_PORT").then(|| "9300".to_string());
        settle(
            parse_yaml(text).unwrap(),
            &SettleContext {
                instance_id: "i-0123456789abcdef0123456789abcdef",
                platform,
                process_host: "127.0.0.1",
                lookup: &env,
            },
        )
    }

    #[test]
    fn a_process_instance_gets_its_ports_from_the_control_plane() {
        let settled = settle_for(
            r#"
persistConfig: true
sources:
  - {kind: http, id: hook, host: 127.0.0.1}
  - {kind: postgres, id: db, database: d, user: u}
  - {kind: postgres, id: db2, database: d, user: u, slotName: mine}
reactions:
  - {kind: sse, id: out, queries: [], port: "${SSE_PORT:-8081}"}
  - {kind: sse, id: other, queries: []}
"#,
            PlatformType::Process,
        );
        assert_eq!(
            settled.to_allocate,
            vec!["/port", "/sources/0/port", "/reactions/1/port"]
        );
        let config = &settled.config;
        assert_eq!(config.static_host(), Some("127.0.0.1"));
        assert_eq!(config.reactions[0].properties["port"], 9300);
        assert_eq!(
            config.sources[1].properties["slotName"],
            "draas_i0123456789abcdef0123456789abcdef_0"
        );
        assert_eq!(config.sources[2].properties["slotName"], "mine");
        // A source added later gets a name no source of the instance has.
        let mut again = settled.config.clone();
        // The first postgres source goes; the second, which names the
        // first's slot, stays.
        again.sources.remove(1);
        again.sources[1].properties.insert(
            "slotName".into(),
            "draas_i0123456789abcdef0123456789abcdef_0".into(),
        );
        again.sources.push(again.sources[1].clone());
        again.sources[2].id = "db3".into();
        again.sources[2].properties.remove("slotName");
        again.sources.push(again.sources[2].clone());
        again.sources[3].id = "db4".into();
        let env = |_: &str| None;
        let resettled = settle(
            again,
            &SettleContext {
                instance_id: "i-0123456789abcdef0123456789abcdef",
                platform: PlatformType::Process,
                process_host: "127.0.0.1",
                lookup: &env,
            },
        );
        let names: Vec<&str> = resettled
            .config
            .sources
            .iter()
            .filter_map(|s| s.properties.get("slotName")?.as_str())
            .collect();
        assert_eq!(
            names,
            vec![
                "draas_i0123456789abcdef0123456789abcdef_0",
                "draas_i0123456789abcdef0123456789abcdef_1",
                "draas_i0123456789abcdef0123456789abcdef_2"
            ]
        );
        let paths: Vec<&str> = settled.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["/sources/1/slotName", "/reactions/0/port", "/persistConfig"]
        );
    }

    #[test]
    fn a_container_listens_everywhere_and_chooses_its_own_ports() {
        let settled = settle_for(
            r#"
host: 127.0.0.1
sources: [{kind: http, id: hook, host: 0.0.0.0}]
reactions: [{kind: sse, id: out, queries: []}]
"#,
            PlatformType::Docker,
        );
        assert!(settled.to_allocate.is_empty());
        let config = &settled.config;
        assert_eq!(config.static_host(), Some("0.0.0.0"));
        assert_eq!(config.static_port(), Some(8080));
        assert_eq!(config.sources[0].properties["port"], 8081);
        assert_eq!(
            config.reactions[0].properties["port"], 8082,
            "the sse default 8080 is the API's"
        );
    }
}
