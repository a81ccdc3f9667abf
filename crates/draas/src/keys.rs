//! `draas keys create|list|revoke`: the API keys of an installation, kept
//! where its control plane reads them (the data directory's key file for
//! `draas up`, Redis for `draas serve`). Output goes to stdout; a new key
//! is printed once, alone on the last line, for scripts.

#![allow(clippy::print_stdout)]

use std::sync::Arc;

use anyhow::Context;
use draas_core::auth::{self, KeyRing, KeyRingError, StoreKeyRing};
use draas_core::ports::StateStore;
use draas_store::KeyFile;

use crate::config::{KeyRingArgs, KeysCommand};

/// Runs a `draas keys` command.
pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create(args) => {
            let ring = open(&args.ring).await?;
            let (key, token) = match &args.name {
                Some(name) => auth::issue(name, args.role)?,
                None => {
                    // Named after its id, known only once it exists.
                    let (key, token) = auth::issue("pending", args.role)?;
                    let name = format!("{}-{}", args.role, &key.id[..8]);
                    (auth::ApiKey { name, ..key }, token)
                }
            };
            let (id, name, role) = (key.id.clone(), key.name.clone(), key.role);
            ring.add(key).await.map_err(explain)?;
            println!("created API key '{name}' (id {id}, role {role}); it is shown only now:");
            println!("{token}");
        }
        KeysCommand::List(args) => {
            let keys = open(&args).await?.list().await.map_err(explain)?;
            println!("{:<18} {:<32} {:<9} CREATED", "ID", "NAME", "ROLE");
            for key in keys {
                println!(
                    "{:<18} {:<32} {:<9} {}",
                    key.id,
                    key.name,
                    key.role,
                    key.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
        }
        KeysCommand::Revoke(args) => {
            let ring = open(&args.ring).await?;
            match ring.revoke(&args.key).await.map_err(explain)? {
                Some(key) => println!("revoked API key '{}' (id {})", key.name, key.id),
                None => anyhow::bail!("no API key has the id or name {:?}", args.key),
            }
        }
    }
    Ok(())
}

fn explain(e: KeyRingError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// The key ring the arguments name.
async fn open(args: &KeyRingArgs) -> anyhow::Result<Arc<dyn KeyRing>> {
    match args.redis() {
        Some(redis) => {
            let settings = redis.settings()?;
            let store: Arc<dyn StateStore> = Arc::new(
                draas_redis::RedisStore::connect(settings)
                    .await
                    .context("cannot reach Redis")?,
            );
            Ok(Arc::new(StoreKeyRing::new(store)))
        }
        None => {
            let dir = args.data.resolve();
            Ok(Arc::new(KeyFile::in_data_dir(&dir)))
        }
    }
}
