//! Ports by what they mean.
//!
//! A component's `port` means different things by kind: the http and grpc
//! sources and the sse reaction **listen** on it (the server binds it), the
//! postgres source and its bootstrap provider **connect** to it (a database
//! elsewhere). Only listened ports are the server's own: DRaaS reserves them
//! (Process instances share their host's ports), checks them free before a
//! launch and publishes them (Docker). A port the server connects to is
//! somebody else's: two instances reading one database both start.
//!
//! [`PORT_FIELDS`] is the one table of which field of which kind is which.
//! A kind it does not name (a plugin of the official drasi-server DRaaS does
//! not know) is taken to listen on nothing: its ports are not reserved.

use serde_json::Value;

use super::{reference_in, ConfigValue, DrasiServerConfig};

/// What a port field is to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRole {
    /// The server binds it: reserved, checked free, published.
    Listen,
    /// The server connects to it: someone else's port.
    Connect,
}

/// Which part of a configuration a port field belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentClass {
    /// `sources[]`.
    Source,
    /// `reactions[]`.
    Reaction,
    /// An inline or shared bootstrap provider.
    Bootstrap,
}

/// One port field of one component kind.
#[derive(Debug, Clone, Copy)]
pub struct PortField {
    /// Sources, reactions or bootstrap providers.
    pub class: ComponentClass,
    /// The kind (`http`, `postgres`, ...).
    pub kind: &'static str,
    /// The field (`port`).
    pub field: &'static str,
    /// Listened or connected to.
    pub role: PortRole,
    /// The plugin's default when the field is absent.
    pub default: Option<u16>,
}

const fn listen(class: ComponentClass, kind: &'static str, default: Option<u16>) -> PortField {
    PortField {
        class,
        kind,
        field: "port",
        role: PortRole::Listen,
        default,
    }
}

const fn connect(class: ComponentClass, kind: &'static str, default: u16) -> PortField {
    PortField {
        class,
        kind,
        field: "port",
        role: PortRole::Connect,
        default: Some(default),
    }
}

/// Every port field DRaaS knows, by kind. (The server's own API port is the
/// top-level `port`: always listened.)
pub const PORT_FIELDS: &[PortField] = &[
    // Listened: the server binds these.
    listen(ComponentClass::Source, "http", None),
    listen(ComponentClass::Source, "grpc", Some(50051)),
    listen(ComponentClass::Reaction, "sse", Some(8080)),
    listen(ComponentClass::Reaction, "mcp", Some(3000)),
    listen(ComponentClass::Reaction, "dashboard", Some(3000)),
    // Connected to: databases and brokers elsewhere.
    connect(ComponentClass::Source, "postgres", 5432),
    connect(ComponentClass::Bootstrap, "postgres", 5432),
    connect(ComponentClass::Source, "mysql", 3306),
    connect(ComponentClass::Bootstrap, "mysql", 3306),
    connect(ComponentClass::Source, "mssql", 1433),
    connect(ComponentClass::Bootstrap, "mssql", 1433),
    connect(ComponentClass::Reaction, "storedproc-postgres", 5432),
    connect(ComponentClass::Reaction, "storedproc-mysql", 3306),
    connect(ComponentClass::Reaction, "storedproc-mssql", 1433),
    connect(ComponentClass::Reaction, "rabbitmq", 5672),
];

/// What `field` of a `kind` component of `class` is to the server: `None`
/// for a field the table does not name.
pub fn port_role(class: ComponentClass, kind: &str, field: &str) -> Option<&'static PortField> {
    PORT_FIELDS
        .iter()
        .find(|f| f.class == class && f.kind == kind && f.field == field)
}

/// A port a configuration listens on, and which part of it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListeningPort {
    /// The TCP port.
    pub port: u16,
    /// `server`, `source 'id'` or `reaction 'id'`.
    pub owner: String,
    /// JSON Pointer of the field that sets it (of the component when the
    /// plugin's default applies).
    pub pointer: String,
    /// Whether the field is absent and the plugin's default applies.
    pub defaulted: bool,
}

/// The value of a port field: a number, or a reference resolved with
/// `lookup`. `None` when it cannot be told (validation reports why).
pub fn port_value(value: &Value, lookup: &dyn Fn(&str) -> Option<String>) -> Option<u16> {
    match reference_in(value) {
        Ok(Some(ConfigValue::Env(reference))) => ConfigValue::<u16>::Env(reference)
            .resolve(lookup, "a port")
            .ok(),
        Ok(Some(_)) | Err(_) => None,
        Ok(None) => value.as_u64().and_then(|p| u16::try_from(p).ok()),
    }
}

/// Every TCP port `config` listens on: the API port, then the listened
/// ports of its components in document order, with references resolved by
/// `lookup`.
pub fn listening_ports(
    config: &DrasiServerConfig,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Vec<ListeningPort> {
    let mut ports = Vec::new();
    let api = match &config.port {
        None => Some(super::DEFAULT_PORT),
        Some(value) => value.resolve(lookup, "a port").ok(),
    };
    if let Some(port) = api {
        ports.push(ListeningPort {
            port,
            owner: "server".to_string(),
            pointer: "/port".to_string(),
            defaulted: config.port.is_none(),
        });
    }
    let sources = config.all_sources().into_iter().map(|(p, s)| {
        (
            ComponentClass::Source,
            "source",
            p,
            &s.id,
            &s.kind,
            &s.properties,
        )
    });
    let reactions = config.all_reactions().into_iter().map(|(p, r)| {
        (
            ComponentClass::Reaction,
            "reaction",
            p,
            &r.id,
            &r.kind,
            &r.properties,
        )
    });
    for (class, what, pointer, id, kind, properties) in sources.chain(reactions) {
        for field in PORT_FIELDS
            .iter()
            .filter(|f| f.class == class && f.kind == kind.as_str() && f.role == PortRole::Listen)
        {
            let (port, defaulted) = match properties.get(field.field) {
                Some(value) => (port_value(value, lookup), false),
                None => (field.default, true),
            };
            if let Some(port) = port {
                ports.push(ListeningPort {
                    port,
                    owner: format!("{what} '{id}'"),
                    pointer: if defaulted {
                        pointer.clone()
                    } else {
                        format!("{pointer}/{}", field.field)
                    },
                    defaulted,
                });
            }
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn only_listened_ports_are_the_servers() {
        let config = parse_yaml(
            r#"
port: 9100
sources:
  - {kind: http, id: in, host: 127.0.0.1, port: 9101}
  - {kind: postgres, id: db, host: 127.0.0.1, port: 5432, database: d, user: u,
     bootstrapProvider: {kind: postgres}}
  - {kind: grpc, id: g}
reactions:
  - {kind: sse, id: out, queries: []}
  - {kind: http, id: hook, queries: [], baseUrl: "http://127.0.0.1:5432"}
"#,
        )
        .unwrap();
        let ports: Vec<(u16, String)> = listening_ports(&config, &no_env)
            .into_iter()
            .map(|p| (p.port, p.pointer))
            .collect();
        assert_eq!(
            ports,
            vec![
                (9100, "/port".to_string()),
                (9101, "/sources/0/port".to_string()),
                (50051, "/sources/2".to_string()),
                (8080, "/reactions/0".to_string()),
            ]
        );
        assert_eq!(
            port_role(ComponentClass::Source, "postgres", "port").map(|f| f.role),
            Some(PortRole::Connect)
        );
    }

    #[test]
    fn references_are_resolved_and_instances_counted() {
        let config = parse_yaml(
            r#"
port: "${API_PORT:-9000}"
instances:
  - id: a
    sources: [{kind: http, id: in, host: 0.0.0.0, port: "${HOOK_PORT}"}]
  - id: b
    reactions: [{kind: sse, id: out, queries: [], port: 9300}]
"#,
        )
        .unwrap();
        let env = |name: &str| (name == "HOOK_PORT").then(|| "9200".to_string());
        let ports: Vec<u16> = listening_ports(&config, &env)
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(ports, vec![9000, 9200, 9300]);
        let pointers: Vec<String> = listening_ports(&config, &env)
            .into_iter()
            .map(|p| p.pointer)
            .collect();
        assert_eq!(pointers[1], "/instances/0/sources/0/port");
    }
}
