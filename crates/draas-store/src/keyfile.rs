//! API keys of a single-node installation, in one file of the data
//! directory (`api-keys.json`, mode 0600).
//!
//! Why not the embedded store: redb locks its file while `draas up` runs,
//! and keys must be made and revoked while it runs. So keys live in their
//! own small file: `draas keys` rewrites it atomically (a temporary file
//! renamed over it, under an exclusive `flock` so two commands never lose
//! each other's change), and the control plane re-reads it whenever its
//! identity (inode, size, modification time) changed — a revoked key stops
//! working with the next request.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use draas_core::auth::{ApiKey, KeyRing, KeyRingError};
use draas_core::ports::StoreError;
use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
pub const KEY_FILE: &str = "api-keys.json";

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Contents {
    version: u32,
    keys: Vec<ApiKey>,
}

/// What identifies one version of the file.
type Stamp = (u64, u64, i64, i64);

/// API keys in `<data dir>/api-keys.json`.
pub struct KeyFile {
    path: PathBuf,
    cache: Mutex<(Option<Stamp>, Vec<ApiKey>)>,
}

fn io(path: &Path, what: &str, e: impl std::fmt::Display) -> KeyRingError {
    KeyRingError::Store(StoreError::Backend(format!(
        "cannot {what} {}: {e}",
        path.display()
    )))
}

impl KeyFile {
    /// The key file of data directory `data_dir` (need not exist yet).
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(KEY_FILE),
            cache: Mutex::new((None, Vec::new())),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stamp(&self) -> Result<Option<Stamp>, KeyRingError> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&self.path, "read", e)),
        }
    }

    fn read(&self) -> Result<Vec<ApiKey>, KeyRingError> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.path, "read", e)),
        };
        let contents: Contents =
            serde_json::from_slice(&text).map_err(|e| io(&self.path, "parse", e))?;
        Ok(contents.keys)
    }

    /// The keys, re-read when the file changed since the last look.
    fn current(&self) -> Result<Vec<ApiKey>, KeyRingError> {
        let stamp = self.stamp()?;
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| io(&self.path, "lock", "poisoned"))?;
        if cache.0 != stamp || stamp.is_none() {
            cache.1 = self.read()?;
            cache.0 = stamp;
        }
        Ok(cache.1.clone())
    }

    /// Changes the keys under an exclusive lock, writing atomically.
    fn modify<T>(
        &self,
        change: impl FnOnce(&mut Vec<ApiKey>) -> Result<T, KeyRingError>,
    ) -> Result<T, KeyRingError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| io(dir, "create", e))?;
        let lock_path = self.path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, "open", e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(&lock_path, "lock", e))?;
        let mut keys = self.read()?;
        let outcome = change(&mut keys)?;
        let text = serde_json::to_vec_pretty(&Contents { version: 1, keys })
            .map_err(|e| io(&self.path, "encode", e))?;
        let temp = self.path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io(&temp, "create", e))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(|e| io(&temp, "write", e))?;
        std::fs::rename(&temp, &self.path).map_err(|e| io(&self.path, "replace", e))?;
        Ok(outcome)
    }
}

#[async_trait]
impl KeyRing for KeyFile {
    async fn find(&self, id: &str) -> Result<Option<ApiKey>, KeyRingError> {
        Ok(self.current()?.into_iter().find(|k| k.id == id))
    }

    async fn list(&self) -> Result<Vec<ApiKey>, KeyRingError> {
        let mut keys = self.current()?;
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    async fn add(&self, key: ApiKey) -> Result<(), KeyRingError> {
        self.modify(|keys| {
            if keys.iter().any(|k| k.name == key.name) {
                return Err(KeyRingError::NameTaken(key.name));
            }
            keys.push(key);
            Ok(())
        })
    }

    async fn revoke(&self, id_or_name: &str) -> Result<Option<ApiKey>, KeyRingError> {
        self.modify(|keys| {
            let at = keys
                .iter()
                .position(|k| k.id == id_or_name || k.name == id_or_name);
            Ok(at.map(|i| keys.remove(i)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use draas_core::auth::{issue, Role};

    #[tokio::test]
    async fn keys_are_added_found_listed_and_revoked_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let writer = KeyFile::in_data_dir(dir.path());
        let reader = KeyFile::in_data_dir(dir.path());
        assert!(reader.list().await.unwrap().is_empty());
        let (a, _) = issue("alice", Role::Admin).unwrap();
        let (b, _) = issue("bob", Role::Viewer).unwrap();
        writer.add(a.clone()).await.unwrap();
        assert_eq!(reader.find(&a.id).await.unwrap(), Some(a.clone()));
        writer.add(b.clone()).await.unwrap();
        let (dup, _) = issue("alice", Role::Viewer).unwrap();
        assert!(matches!(
            writer.add(dup).await,
            Err(KeyRingError::NameTaken(_))
        ));
        assert_eq!(reader.list().await.unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(writer.revoke("alice").await.unwrap(), Some(a.clone()));
        assert_eq!(reader.find(&a.id).await.unwrap(), None, "seen at once");
        assert_eq!(writer.revoke(&b.id).await.unwrap(), Some(b));
        assert_eq!(writer.revoke("nobody").await.unwrap(), None);
        let mode = std::fs::metadata(writer.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
