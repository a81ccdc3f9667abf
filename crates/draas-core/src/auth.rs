//! API keys and roles: who may call the REST API, and what they may do.
//!
//! - A key is a bearer token `draas_<id>_<secret>`: the id (16 hex digits)
//!   names the stored record, so a request is checked against one record,
//!   never by scanning; the secret is 32 random bytes (64 hex digits).
//! - Only an Argon2id hash of the secret is kept (PHC string), so a copy of
//!   the store gives nobody a usable key. Verification compares in
//!   constant time.
//! - A key has one [`Role`]; every route of the API names the [`Access`]
//!   it needs, and [`Role::may`] decides.
//!
//! Where keys live is a port ([`KeyRing`]): a file in the data directory
//! for `draas up` (its embedded store is locked by the running process, and
//! keys must be manageable while it runs), the shared store for `draas
//! serve` ([`StoreKeyRing`], Redis).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ports::store::{JsonStore, Precondition, StateStore, StoreError};

/// The store collection of API keys ([`StoreKeyRing`]), keyed by key id.
pub const API_KEYS: &str = "api-keys";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Lifecycle and configuration of instances, and reading.
    Operator,
    /// Reading.
    Viewer,
    /// Pushing status only (`POST /api/status/updates`): for daemons.
    Agent,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Viewer, Role::Agent];

    /// The role's name, as the CLI and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Agent => "agent",
        }
    }

    /// Whether a key of this role may use a route that needs `access`.
    pub fn may(self, access: Access) -> bool {
        match access {
            Access::Public => true,
            Access::Read => matches!(self, Role::Admin | Role::Operator | Role::Viewer),
            Access::Operate => matches!(self, Role::Admin | Role::Operator),
            Access::Administer => self == Role::Admin,
            Access::PushStatus => matches!(self, Role::Admin | Role::Agent),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a role: admin, operator, viewer or agent"))
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum Access {
    /// Nothing: probes and the published contract.
    Public,
    /// Reading state (instances, status, events, logs, metrics).
    Read,
    /// Changing instances: lifecycle, configuration, reconciliation.
    Operate,
    /// Operating the installation itself (dead letters, the audit log).
    Administer,
    /// Pushing an instance's status from outside (daemons).
    PushStatus,
}

impl Access {
    /// The least role that has it (for error messages).
    pub fn least_role(self) -> &'static str {
        match self {
            Access::Public => "none",
            Access::Read => "viewer",
            Access::Operate => "operator",
            Access::Administer => "admin",
            Access::PushStatus => "agent",
        }
    }
}

/// A stored API key: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    /// The public part of the token; the record's key.
    pub id: String,
    /// A name for people and the audit log (unique).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Argon2id hash of the secret (PHC string).
    pub hash: String,
}

/// What a listing shows of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct KeySummary {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

impl From<&ApiKey> for KeySummary {
    fn from(key: &ApiKey) -> Self {
        Self {
            id: key.id.clone(),
            name: key.name.clone(),
            role: key.role,
            created_at: key.created_at,
        }
    }
}

/// The prefix of every token.
pub const TOKEN_PREFIX: &str = "draas_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

/// A token split into its parts.
#[derive(Clone, PartialEq, Eq)]
pub struct Token<'a> {
    /// The key id.
    pub id: &'a str,
    /// The secret.
    pub secret: &'a str,
}

impl fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, <secret>)", self.id)
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Splits `text` into id and secret; `None` when it is not a DRaaS token.
pub fn parse_token(text: &str) -> Option<Token<'_>> {
    let rest = text.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (is_lower_hex(id, ID_HEX) && is_lower_hex(secret, SECRET_HEX)).then_some(Token { id, secret })
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A bad name.
    #[error("{0}")]
    InvalidName(String),
    /// The system's random source or the hash failed.
    #[error("cannot make a key: {0}")]
    Crypto(String),
}

/// Checks a key's name: 1-63 of `a-z`, `0-9`, `-`, `_`, `.`.
pub fn validate_key_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(KeyError::InvalidName(format!(
            "{name:?} is not a key name (1-63 of a-z, 0-9, '-', '_', '.')"
        )))
    }
}

fn random_hex(bytes: usize) -> Result<String, KeyError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| KeyError::Crypto(e.to_string()))?;
    Ok(hex::encode(buf))
}

fn hasher() -> Argon2<'static> {
    // Argon2id with the crate's defaults (OWASP's minimum: 19 MiB, t=2).
    Argon2::default()
}

/// A new key: the record to store and the token to hand out (once).
pub fn issue(name: &str, role: Role) -> Result<(ApiKey, String), KeyError> {
    validate_key_name(name)?;
    let id = random_hex(ID_HEX / 2)?;
    let secret = random_hex(SECRET_HEX / 2)?;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| KeyError::Crypto(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| KeyError::Crypto(e.to_string()))?;
    let hash = hasher()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|e| KeyError::Crypto(e.to_string()))?
        .to_string();
    let token = format!("{TOKEN_PREFIX}{id}_{secret}");
    Ok((
        ApiKey {
            id,
            name: name.to_string(),
            role,
            created_at: Utc::now(),
            hash,
        },
        token,
    ))
}

/// Whether `secret` is the secret of `key` (slow: one Argon2 run; the
/// comparison is constant-time).
pub fn verify(key: &ApiKey, secret: &str) -> bool {
    match PasswordHash::new(&key.hash) {
        Ok(parsed) => hasher().verify_password(secret.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Why the key ring refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    /// Names are unique.
    #[error("a key named {0:?} exists")]
    NameTaken(String),
    /// The keys could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where API keys are kept.
#[async_trait]
pub trait KeyRing: Send + Sync + 'static {
    /// The key with id `id`.
    async fn find(&self, id: &str) -> Result<Option<ApiKey>, KeyRingError>;
    /// Every key, oldest first.
    async fn list(&self) -> Result<Vec<ApiKey>, KeyRingError>;
    /// Adds `key`; refused when its name is taken.
    async fn add(&self, key: ApiKey) -> Result<(), KeyRingError>;
    /// Removes the key with this id or name; returns it, or `None`.
    async fn revoke(&self, id_or_name: &str) -> Result<Option<ApiKey>, KeyRingError>;
}

/// API keys in a [`StateStore`] (collection [`API_KEYS`]).
pub struct StoreKeyRing {
    store: Arc<dyn StateStore>,
}

impl StoreKeyRing {
    /// Keys in `store`.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl KeyRing for StoreKeyRing {
    async fn find(&self, id: &str) -> Result<Option<ApiKey>, KeyRingError> {
        Ok(self
            .store
            .get_json::<ApiKey>(API_KEYS, id)
            .await?
            .map(|record| record.value))
    }

    async fn list(&self) -> Result<Vec<ApiKey>, KeyRingError> {
        let mut keys: Vec<ApiKey> = self
            .store
            .list_json::<ApiKey>(API_KEYS)
            .await?
            .into_iter()
            .map(|(_, record)| record.value)
            .collect();
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    async fn add(&self, key: ApiKey) -> Result<(), KeyRingError> {
        // Keys are made by hand, rarely: a check-then-put is enough.
        if self.list().await?.iter().any(|k| k.name == key.name) {
            return Err(KeyRingError::NameTaken(key.name));
        }
        self.store
            .put_json(API_KEYS, &key.id, &key, Precondition::Absent)
            .await?;
        Ok(())
    }

    async fn revoke(&self, id_or_name: &str) -> Result<Option<ApiKey>, KeyRingError> {
        let Some(key) = self
            .list()
            .await?
            .into_iter()
            .find(|k| k.id == id_or_name || k.name == id_or_name)
        else {
            return Ok(None);
        };
        self.store
            .delete(API_KEYS, &key.id, Precondition::None)
            .await?;
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_parse_and_verify_and_others_do_not() {
        let (key, token) = issue("ci-bot", Role::Operator).unwrap();
        let parsed = parse_token(&token).unwrap();
        assert_eq!(parsed.id, key.id);
        assert!(verify(&key, parsed.secret));
        assert!(!key.hash.contains(parsed.secret), "only a hash is kept");
        let (other, other_token) = issue("other", Role::Viewer).unwrap();
        assert!(!verify(&key, parse_token(&other_token).unwrap().secret));
        assert_ne!(other.id, key.id);
        assert!(!format!("{parsed:?}").contains(parsed.secret));
        for bad in [
            "",
            "draas_",
            "bearer",
            &token[..token.len() - 1],
            &token.to_uppercase(),
            &format!("{token}0"),
            &token.replacen("draas_", "drasi_", 1),
        ] {
            assert!(parse_token(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn roles_allow_what_they_say() {
        use Access::*;
        let table = [
            (Role::Admin, [true, true, true, true, true]),
            (Role::Operator, [true, true, true, false, false]),
            (Role::Viewer, [true, true, false, false, false]),
            (Role::Agent, [true, false, false, false, true]),
        ];
        for (role, allowed) in table {
            for (access, want) in [Public, Read, Operate, Administer, PushStatus]
                .into_iter()
                .zip(allowed)
            {
                assert_eq!(role.may(access), want, "{role} {access:?}");
            }
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn key_names_are_checked() {
        for good in ["a", "ci-bot", "team.ops_1"] {
            assert!(validate_key_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Root", "a b", "x/y", &"a".repeat(64)] {
            assert!(validate_key_name(bad).is_err(), "{bad}");
        }
    }
}
