//! The identity of one DRaaS installation: a random id created once and
//! kept in its store. Platform objects (containers, volumes) carry it as a
//! label, so that installations sharing a Docker engine never touch each
//! other's objects.

use crate::ports::store::{JsonStore, Precondition, StateStore, StoreError};

/// Collection of installation-wide settings.
const META: &str = "meta";
/// Key of the installation id.
const INSTALLATION: &str = "installation";
/// Key of the fingerprint key.
const FINGERPRINT_KEY: &str = "fingerprint-key";

/// This installation's id: read, or created by the first caller.
pub async fn id<S: StateStore + ?Sized>(store: &S) -> Result<String, StoreError> {
    read_or_create(store, INSTALLATION).await
}

/// A random secret of this installation, kept only in its store: the key of
/// fingerprints of secret values (e.g. the hash that tells a Kubernetes
/// worker whether an instance's Secret changed), so that a fingerprint
/// seen on a platform object tells nothing about the values.
pub async fn fingerprint_key<S: StateStore + ?Sized>(store: &S) -> Result<String, StoreError> {
    read_or_create(store, FINGERPRINT_KEY).await
}

/// The random value under `key`, created by the first caller.
async fn read_or_create<S: StateStore + ?Sized>(
    store: &S,
    key: &str,
) -> Result<String, StoreError> {
    if let Some(found) = store.get_json::<String>(META, key).await? {
        return Ok(found.value);
    }
    let fresh = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        if key == INSTALLATION {
            String::new()
        } else {
            uuid::Uuid::new_v4().simple().to_string()
        }
    );
    match store
        .put_json(META, key, &fresh, Precondition::Absent)
        .await
    {
        Ok(_) => Ok(fresh),
        // Someone else created it first: theirs is the one.
        Err(StoreError::Conflict { .. }) => store
            .get_json::<String>(META, key)
            .await?
            .map(|r| r.value)
            .ok_or_else(|| StoreError::Backend(format!("the installation's {key} vanished"))),
        Err(e) => Err(e),
    }
}
