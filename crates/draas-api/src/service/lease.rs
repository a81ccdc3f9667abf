//! The reconciler's lease (`/api/reconciler/lease`) and the fencing of its
//! steps (see `draas_core::lease`). The lease lives in the control plane's
//! store, so every replica and every worker sees the same one: Redis in
//! distributed mode.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use draas_core::keys;
use draas_core::lease::{validate_holder, Held, Lease, RECONCILER_LEASE};
use draas_core::ports::store::{read_modify_write, Change, JsonStore, Record};

use super::{ControlPlane, MAX_ATTEMPTS};
use crate::error::{ApiError, ApiResult, FieldError};

/// Shortest and longest lease terms accepted.
pub const LEASE_TTL: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(300);

impl ControlPlane {
    /// The reconciler lease as stored (live or not), if it was ever taken.
    pub async fn lease(&self) -> ApiResult<Option<Lease>> {
        Ok(self
            .store
            .get_json::<Lease>(keys::LEASES, RECONCILER_LEASE)
            .await?
            .map(|r| r.value))
    }

    /// Claims or renews the reconciler lease for `holder` for `ttl`; `409
    /// LEASE_HELD` while another holder's term lasts.
    pub async fn claim_lease(&self, holder: &str, ttl: Duration) -> ApiResult<Lease> {
        check_holder(holder)?;
        if !LEASE_TTL.contains(&ttl) {
            return Err(ApiError::invalid(
                "INVALID_LEASE",
                "the lease request is not valid",
                vec![FieldError {
                    path: "/ttlSeconds".into(),
                    message: format!(
                        "between {} and {} seconds",
                        LEASE_TTL.start().as_secs(),
                        LEASE_TTL.end().as_secs()
                    ),
                    line: None,
                }],
            ));
        }
        let ttl = chrono::Duration::from_std(ttl).map_err(|e| ApiError::internal(e.to_string()))?;
        let ((lease, new_term), _) = read_modify_write(
            self.store.as_ref(),
            keys::LEASES,
            RECONCILER_LEASE,
            MAX_ATTEMPTS,
            |current: Option<Record<Lease>>| {
                let current = current.map(|r| r.value);
                match Lease::claim(current.as_ref(), holder, ttl, Utc::now()) {
                    Ok(lease) => {
                        let new_term = current.as_ref().is_none_or(|c| c.token != lease.token);
                        Ok(Change::Put {
                            value: lease.clone(),
                            also: Vec::new(),
                            output: (lease, new_term),
                        })
                    }
                    Err(Held(lease)) => Err(ApiError::conflict(
                        "LEASE_HELD",
                        format!(
                            "the reconciler lease is held by {} (term {}) until {}",
                            lease.holder,
                            lease.token,
                            lease.expires_at.to_rfc3339()
                        ),
                    )),
                }
            },
        )
        .await
        .map_err(|e| super::cas_error_of("the reconciler lease", e))?;
        if new_term {
            tracing::info!(holder, token = lease.token, "reconciler lease: a new term");
        }
        Ok(lease)
    }

    /// Gives the lease up, so another reconciler takes over at once; a
    /// holder that does not hold it changes nothing.
    pub async fn release_lease(&self, holder: &str) -> ApiResult<bool> {
        check_holder(holder)?;
        let (released, _) = read_modify_write(
            self.store.as_ref(),
            keys::LEASES,
            RECONCILER_LEASE,
            MAX_ATTEMPTS,
            |current: Option<Record<Lease>>| {
                Ok::<_, ApiError>(
                    match current.and_then(|r| r.value.release(holder, Utc::now())) {
                        Some(released) => Change::Put {
                            value: released,
                            also: Vec::new(),
                            output: true,
                        },
                        None => Change::Keep(false),
                    },
                )
            },
        )
        .await
        .map_err(|e| super::cas_error_of("the reconciler lease", e))?;
        Ok(released)
    }

    /// `409 STALE_FENCE` unless `token` is the live lease's.
    pub async fn check_fence(&self, token: u64) -> ApiResult<()> {
        let now = Utc::now();
        match self.lease().await? {
            Some(lease) if lease.admits(token, now) => Ok(()),
            Some(lease) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "STALE_FENCE",
                format!(
                    "fencing token {token} is not the live reconciler lease's (term {}, held by {}, {} {})",
                    lease.token,
                    lease.holder,
                    if lease.is_live(now) { "until" } else { "lapsed at" },
                    lease.expires_at.to_rfc3339()
                ),
            )),
            None => Err(ApiError::new(
                StatusCode::CONFLICT,
                "STALE_FENCE",
                format!("fencing token {token}: nobody holds the reconciler lease"),
            )),
        }
    }
}

fn check_holder(holder: &str) -> ApiResult<()> {
    validate_holder(holder).map_err(|message| {
        ApiError::invalid(
            "INVALID_LEASE",
            "the lease request is not valid",
            vec![FieldError {
                path: "/holder".into(),
                message,
                line: None,
            }],
        )
    })
}
