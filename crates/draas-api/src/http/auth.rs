//! Who is calling: bearer API keys checked against the key ring, and the
//! role's right to the route (each route names the [`Access`] it needs in
//! the route table, so none can be added without saying).
//!
//! - 401 `UNAUTHENTICATED` (with `WWW-Authenticate: Bearer`) when a route
//!   needs a key and none, a malformed one, an unknown one or a revoked one
//!   was sent — one message for all, so the answer tells nothing about
//!   which keys exist;
//! - 403 `FORBIDDEN` when the key's role lacks the route's access, naming
//!   both.
//!
//! A key is verified with Argon2 once; afterwards the SHA-256 of its
//! secret is remembered and compared in constant time, and the stored
//! record is looked up on every request (a revoked or replaced key stops
//! working at once).
//!
//! The reconciler built into the control plane needs no key: it calls the
//! control plane in-process, not through this API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use draas_core::auth::{self, Access, KeyRing, Role};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The caller of a request, as the auth layer identified it (a request
/// extension, read by the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name (`anonymous` when auth is off and no key was sent).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// A key verified once: the stored hash it was verified against and the
/// digest of its secret.
struct Verified {
    hash: String,
    digest: [u8; 32],
}

/// Requests per key, as a token bucket.
type Limiter = governor::DefaultKeyedRateLimiter<String>;

/// The API's authentication and authorization.
pub struct Auth {
    required: bool,
    keys: Option<Arc<dyn KeyRing>>,
    verified: Mutex<HashMap<String, Verified>>,
    limiter: Option<Limiter>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Auth {
    /// Every request needs a key of a role that has the route's access.
    pub fn required(keys: Arc<dyn KeyRing>) -> Self {
        Self::new(true, Some(keys))
    }

    fn new(required: bool, keys: Option<Arc<dyn KeyRing>>) -> Self {
        Self {
            required,
            keys,
            verified: Mutex::new(HashMap::new()),
            limiter: None,
        }
    }

    /// Limits each stored key to `per_second` requests a second on
    /// average, in bursts of up to twice that; beyond it, 429 with
    /// `Retry-After`. Requests without a key (where none is required) are
    /// not limited.
    pub fn with_rate_limit(mut self, per_second: u32) -> Self {
        self.limiter = std::num::NonZeroU32::new(per_second).map(|rate| {
            let burst = rate.saturating_mul(std::num::NonZeroU32::MIN.saturating_add(1));
            governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
        });
        self
    }

    /// Keys are optional: a request without one acts as an admin (for a
    /// control plane on loopback); a key that is sent still names the
    /// caller in the audit log, and a bad one is still refused.
    pub fn optional(keys: Option<Arc<dyn KeyRing>>) -> Self {
        Self::new(false, keys)
    }

    /// Whether requests need a key.
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// Identifies the caller of a request that needs `access`.
    pub async fn check(
        &self,
        authorization: Option<&HeaderValue>,
        access: Access,
    ) -> Result<Option<Caller>, Refusal> {
        let Some(value) = authorization else {
            if access == Access::Public {
                return Ok(None);
            }
            if !self.required {
                return Ok(Some(Caller {
                    name: "anonymous".into(),
                    role: Role::Admin,
                }));
            }
            return Err(unauthenticated(
                "this route needs an API key: send Authorization: Bearer <key>",
            )
            .into());
        };
        let caller = self.identify(value).await?;
        if let Some(limiter) = &self.limiter {
            if let Err(not_until) = limiter.check_key(&caller.name) {
                use governor::clock::Clock;
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                return Err(Refusal {
                    error: ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "RATE_LIMITED",
                        format!(
                            "key '{}' sent too many requests; retry after {} ms",
                            caller.name,
                            wait.as_millis()
                        ),
                    ),
                    retry_after: Some(wait.as_secs() + 1),
                    caller: Some(caller),
                });
            }
        }
        if !caller.role.may(access) {
            let error = ApiError::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                format!(
                    "key '{}' has role {}; this route needs {} or admin",
                    caller.name,
                    caller.role,
                    access.least_role()
                ),
            );
            return Err(Refusal {
                error,
                caller: Some(caller),
                retry_after: None,
            });
        }
        Ok(Some(caller))
    }

    /// The caller a header names.
    async fn identify(&self, value: &HeaderValue) -> Result<Caller, ApiError> {
        const REFUSED: &str = "unknown or revoked API key";
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| unauthenticated("send the key as Authorization: Bearer <key>"))?;
        let token = auth::parse_token(token)
            .ok_or_else(|| unauthenticated("that is not a DRaaS API key (draas_<id>_<secret>)"))?;
        let presented = digest(token.secret);
        let Some(keys) = &self.keys else {
            return Err(unauthenticated(REFUSED));
        };
        let key = keys
            .find(token.id)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "STORE_UNAVAILABLE",
                    format!("cannot read the API keys: {e}"),
                )
            })?
            .ok_or_else(|| unauthenticated(REFUSED))?;
        let known = {
            let verified = self
                .verified
                .lock()
                .map_err(|_| ApiError::internal("the key cache is poisoned"))?;
            verified
                .get(&key.id)
                .filter(|v| v.hash == key.hash)
                .map(|v| bool::from(v.digest.ct_eq(&presented)))
        };
        let good = match known {
            Some(good) => good,
            None => {
                // One slow hash, off the async threads.
                let (k, secret) = (key.clone(), token.secret.to_string());
                let good = tokio::task::spawn_blocking(move || auth::verify(&k, &secret))
                    .await
                    .unwrap_or(false);
                if good {
                    self.verified
                        .lock()
                        .map_err(|_| ApiError::internal("the key cache is poisoned"))?
                        .insert(
                            key.id.clone(),
                            Verified {
                                hash: key.hash.clone(),
                                digest: presented,
                            },
                        );
                }
                good
            }
        };
        if good {
            Ok(Caller {
                name: key.name,
                role: key.role,
            })
        } else {
            Err(unauthenticated(REFUSED))
        }
    }
}

/// Why a request was refused, and by whom when the key was good.
#[derive(Debug)]
pub struct Refusal {
    /// The 401 or 403 (or 503 when the keys cannot be read).
    pub error: ApiError,
    /// The caller, when the key was good but its role falls short.
    pub caller: Option<Caller>,
    /// Seconds to wait, for a 429.
    pub retry_after: Option<u64>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            caller: None,
            retry_after: None,
        }
    }
}

fn unauthenticated(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", detail)
}

/// The middleware of one route: refuses, or passes the request on with
/// its [`Caller`] as an extension. The caller rides on the response too
/// (for the audit log, refusals included).
pub async fn authorize(
    auth: Arc<Auth>,
    access: Access,
    mut request: Request,
    next: Next,
) -> Response {
    let checked = auth
        .check(request.headers().get(header::AUTHORIZATION), access)
        .await;
    match checked {
        Ok(caller) => {
            if let Some(caller) = &caller {
                request.extensions_mut().insert(caller.clone());
            }
            let mut response = next.run(request).await;
            if let Some(caller) = caller {
                response.extensions_mut().insert(caller);
            }
            response
        }
        Err(Refusal {
            error,
            caller,
            retry_after,
        }) => {
            let unauthorized = error.status == StatusCode::UNAUTHORIZED;
            let mut response = error.into_response();
            if unauthorized {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"draas\""),
                );
            }
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            if let Some(caller) = caller {
                response.extensions_mut().insert(caller);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use draas_core::auth::{ApiKey, KeyRingError};

    struct Ring(Mutex<Vec<ApiKey>>);

    #[async_trait]
    impl KeyRing for Ring {
        async fn find(&self, id: &str) -> Result<Option<ApiKey>, KeyRingError> {
            Ok(self.0.lock().unwrap().iter().find(|k| k.id == id).cloned())
        }
        async fn list(&self) -> Result<Vec<ApiKey>, KeyRingError> {
            Ok(self.0.lock().unwrap().clone())
        }
        async fn add(&self, key: ApiKey) -> Result<(), KeyRingError> {
            self.0.lock().unwrap().push(key);
            Ok(())
        }
        async fn revoke(&self, id: &str) -> Result<Option<ApiKey>, KeyRingError> {
            let mut keys = self.0.lock().unwrap();
            let at = keys.iter().position(|k| k.id == id || k.name == id);
            Ok(at.map(|i| keys.remove(i)))
        }
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    #[tokio::test]
    async fn keys_are_checked_cached_and_revoked_at_once() {
        let ring = Arc::new(Ring(Mutex::new(Vec::new())));
        let (key, token) = auth::issue("ops", Role::Operator).unwrap();
        ring.add(key).await.unwrap();
        let auth = Auth::required(ring.clone());
        for _ in 0..2 {
            let caller = auth.check(Some(&bearer(&token)), Access::Operate).await;
            assert_eq!(caller.unwrap().unwrap().name, "ops");
        }
        let forbidden = auth
            .check(Some(&bearer(&token)), Access::Administer)
            .await
            .unwrap_err()
            .error;
        assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
        assert!(
            forbidden.detail.contains("operator"),
            "{}",
            forbidden.detail
        );
        // A wrong secret for a known id, after the right one was cached.
        let mut wrong = token.clone();
        wrong.replace_range(wrong.len() - 4.., "0000");
        let refused = auth.check(Some(&bearer(&wrong)), Access::Read).await;
        assert_eq!(refused.unwrap_err().error.status, StatusCode::UNAUTHORIZED);
        ring.revoke("ops").await.unwrap();
        let revoked = auth.check(Some(&bearer(&token)), Access::Read).await;
        assert_eq!(revoked.unwrap_err().error.status, StatusCode::UNAUTHORIZED);
        let none = auth.check(None, Access::Read).await.unwrap_err().error;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED);
        assert_eq!(auth.check(None, Access::Public).await.unwrap(), None);
        let basic = HeaderValue::from_static("Basic YWxhZGRpbjpvcGVuc2VzYW1l");
        let basic = auth
            .check(Some(&basic), Access::Read)
            .await
            .unwrap_err()
            .error;
        assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_key_over_its_rate_is_refused_with_a_retry_after() {
        let ring = Arc::new(Ring(Mutex::new(Vec::new())));
        let (key, token) = auth::issue("busy", Role::Viewer).unwrap();
        ring.add(key).await.unwrap();
        let (other, other_token) = auth::issue("calm", Role::Viewer).unwrap();
        ring.add(other).await.unwrap();
        let auth = Auth::required(ring).with_rate_limit(5);
        let mut admitted = 0;
        let mut refusal = None;
        for _ in 0..50 {
            match auth.check(Some(&bearer(&token)), Access::Read).await {
                Ok(_) => admitted += 1,
                Err(r) => {
                    refusal = Some(r);
                    break;
                }
            }
        }
        // A burst of twice the rate (give or take the refill meanwhile).
        assert!((10..=12).contains(&admitted), "{admitted}");
        let refusal = refusal.expect("refused");
        assert_eq!(refusal.error.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refusal.error.code, "RATE_LIMITED");
        assert_eq!(refusal.retry_after, Some(1));
        // Other keys are not held back.
        assert!(auth
            .check(Some(&bearer(&other_token)), Access::Read)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn optional_auth_admits_the_anonymous_and_refuses_an_unknown_key() {
        let auth = Auth::optional(None);
        let anonymous = auth.check(None, Access::Administer).await.unwrap().unwrap();
        assert_eq!(anonymous.role, Role::Admin);
        let (_, stranger) = auth::issue("stranger", Role::Admin).unwrap();
        let refused = auth.check(Some(&bearer(&stranger)), Access::Read).await;
        assert_eq!(refused.unwrap_err().error.status, StatusCode::UNAUTHORIZED);
    }
}
