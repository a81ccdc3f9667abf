//! The replication slots of the server's postgres sources: reserved before
//! the sources start, dropped when the instance is deleted.
//!
//! Reserving. A postgres source creates its slot itself, from its
//! replication task, after the source already reports `Running` and often
//! after its query's bootstrap snapshot was taken; it then streams from the
//! snapshot's position, but a slot keeps WAL only from its own creation on.
//! A row committed between the snapshot and the slot's creation is in
//! neither: lost (seen on every first start: an INSERT right after the
//! server is ready never arrives). The runtime therefore creates each
//! missing slot of an auto-started postgres source before any source
//! starts; the source finds it and streams from the snapshot on, losing
//! nothing. A database the runtime cannot reach is only a warning: the
//! source reports that itself.
//!
//! Dropping.
//! A postgres source creates a permanent logical replication slot and
//! never drops it; a slot nobody reads keeps every WAL segment from its
//! position on, until the database's disk is full. drasi-server leaves its
//! slots behind. DRaaS drops them when it deletes the instance: through
//! `POST /draas/v1/release-replication-slots` while the server runs (its
//! postgres sources are stopped first, so no walsender holds the slot), or
//! with `draas-runtime release-replication-slots --config FILE` when it does
//! not.

use std::time::Duration;

use draas_core::config::{ConfigValue, DrasiServerConfig};
use draas_drasi::assemble::Lib;
use serde_json::{Map, Value};
use tracing::{info, warn};

/// How long a terminated walsender may take to let its slot go.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Where one postgres source replicates from.
struct SlotOf {
    source: String,
    auto_start: bool,
    host: String,
    port: u16,
    database: String,
    user: String,
    password: String,
    slot: String,
}

fn text(props: &Map<String, Value>, key: &str, default: &str) -> Result<String, String> {
    match props.get(key) {
        None => Ok(default.to_string()),
        Some(value) => serde_json::from_value::<ConfigValue<String>>(value.clone())
            .map_err(|e| format!("{key}: {e}"))?
            .resolve(&env_lookup, "text")
            .map_err(|e| format!("{key}: {e}")),
    }
}

fn slots_of(config: &DrasiServerConfig) -> Result<Vec<SlotOf>, String> {
    let mut slots = Vec::new();
    for (_, source) in config.all_sources() {
        if source.kind != "postgres" {
            continue;
        }
        let props = &source.properties;
        let port = match props.get("port") {
            None => 5432,
            Some(value) => serde_json::from_value::<ConfigValue<u16>>(value.clone())
                .map_err(|e| format!("source '{}' port: {e}", source.id))?
                .resolve(&env_lookup, "a port")
                .map_err(|e| format!("source '{}' port: {e}", source.id))?,
        };
        let named = |key, default| {
            text(props, key, default).map_err(|e| format!("source '{}' {e}", source.id))
        };
        slots.push(SlotOf {
            source: source.id.clone(),
            auto_start: source.auto_start,
            host: named("host", "localhost")?,
            port,
            database: named("database", "")?,
            user: named("user", "")?,
            password: named("password", "")?,
            slot: props
                .get("slotName")
                .and_then(Value::as_str)
                .unwrap_or("drasi_slot")
                .to_string(),
        });
    }
    Ok(slots)
}

/// Stops the postgres sources of `libs` (when given) and drops the
/// replication slot of each postgres source of `config`. Returns the slots
/// dropped; a slot that does not exist is not an error.
pub async fn release(libs: &[Lib], config: &DrasiServerConfig) -> Result<Vec<String>, String> {
    let slots = slots_of(config)?;
    for lib in libs {
        for slot in &slots {
            if lib.kinds.get(&slot.source).map(String::as_str) == Some("postgres") {
                // Stopping aborts its replication task: the walsender ends.
                let _ = lib.lib.stop_source(&slot.source).await;
            }
        }
    }
    let mut released = Vec::new();
    for slot in &slots {
        if drop_slot(slot).await? {
            info!(source = %slot.source, slot = %slot.slot, "replication slot dropped");
            released.push(slot.slot.clone());
        }
    }
    Ok(released)
}

/// Creates the missing replication slot of each auto-started postgres
/// source of `config` (see the module's documentation). Returns the slots
/// created; what could not be reserved is logged, never fatal.
pub async fn reserve(config: &DrasiServerConfig) -> Vec<String> {
    let slots = match slots_of(config) {
        Ok(slots) => slots,
        Err(e) => {
            warn!("replication slots not reserved: {e}");
            return Vec::new();
        }
    };
    let mut created = Vec::new();
    for slot in slots.iter().filter(|s| s.auto_start) {
        match create_slot(slot).await {
            Ok(true) => {
                info!(source = %slot.source, slot = %slot.slot, "replication slot reserved");
                created.push(slot.slot.clone());
            }
            Ok(false) => {}
            Err(e) => warn!("replication slot not reserved: {e}"),
        }
    }
    created
}

/// Creates `slot` unless it exists; whether it did.
async fn create_slot(slot: &SlotOf) -> Result<bool, String> {
    let (client, driver) = connect(slot).await?;
    let outcome = async {
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot.slot],
            )
            .await
            .map_err(|e| format!("source '{}': {e}", slot.source))?
            .is_some();
        if exists {
            return Ok(false);
        }
        match client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot.slot],
            )
            .await
        {
            Ok(_) => Ok(true),
            // Created meanwhile by someone else: reserved all the same.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
                Ok(false)
            }
            Err(e) => Err(format!(
                "source '{}': cannot create slot {}: {e}",
                slot.source, slot.slot
            )),
        }
    }
    .await;
    driver.abort();
    outcome
}

/// A connection to `slot`'s database, with the task that drives it.
async fn connect(
    slot: &SlotOf,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&slot.host)
        .port(slot.port)
        .dbname(&slot.database)
        .user(&slot.user)
        .password(&slot.password)
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
        format!(
            "source '{}': cannot connect to {}:{}: {e}",
            slot.source, slot.host, slot.port
        )
    })?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

async fn drop_slot(slot: &SlotOf) -> Result<bool, String> {
    let (client, driver) = connect(slot).await?;
    let outcome = async {
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        loop {
            let row = client
                .query_opt(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot.slot],
                )
                .await
                .map_err(|e| format!("source '{}': {e}", slot.source))?;
            let Some(row) = row else {
                return Ok(false);
            };
            let active: Option<i32> = row.get(0);
            match active {
                None => {
                    client
                        .execute("SELECT pg_drop_replication_slot($1)", &[&slot.slot])
                        .await
                        .map_err(|e| {
                            format!(
                                "source '{}': cannot drop slot {}: {e}",
                                slot.source, slot.slot
                            )
                        })?;
                    return Ok(true);
                }
                Some(pid) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!(
                            "source '{}': slot {} is still in use by process {pid}",
                            slot.source, slot.slot
                        ));
                    }
                    // Whoever still reads the slot (a server of this
                    // instance that did not stop) is cut off.
                    let _ = client
                        .execute("SELECT pg_terminate_backend($1)", &[&pid])
                        .await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    .await;
    driver.abort();
    outcome
}
