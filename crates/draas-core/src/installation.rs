//! The identity of one DRaaS installation: a random id created once and
//! kept in its store. Platform objects (containers, volumes) carry it as a
//! label, so that installations sharing a Docker engine never touch each
//! other's objects.

use crate::ports::store::{JsonStore, Precondition, StateStore, StoreError};

/// Collection of installation-wide settings.
const META: &str = "meta";
/// Key of the installation id.
const INSTALLATION: &str = "installation";

/// This installation's id: read, or created by the first caller.
pub async fn id<S: StateStore + ?Sized>(store: &S) -> Result<String, StoreError> {
    if let Some(found) = store.get_json::<String>(META, INSTALLATION).await? {
        return Ok(found.value);
    }
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    match store
        .put_json(META, INSTALLATION, &fresh, Precondition::Absent)
        .await
    {
        Ok(_) => Ok(fresh),
        // Someone else created it first: theirs is the one.
        Err(StoreError::Conflict { .. }) => store
            .get_json::<String>(META, INSTALLATION)
            .await?
            .map(|r| r.value)
            .ok_or_else(|| StoreError::Backend("the installation id vanished".into())),
        Err(e) => Err(e),
    }
}
