//! The reconciler's lease: in distributed mode several reconcilers may run
//! (one per control-plane replica, or standalone), and exactly one acts.
//!
//! The lease is a record in the shared store, claimed and renewed with a
//! compare-and-set through the control plane. Each new term (a new holder,
//! or the same one after its lease ran out) gets a larger **fencing
//! token**. The holder sends its token with every step; the control plane
//! refuses a token that is not the current one, and puts it in the command
//! it sends, and workers refuse a command whose token is older than the
//! lease's. So a reconciler that paused past its lease (a long GC, a
//! partition) and wakes up believing it still leads changes nothing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The key of the reconciler's lease in [`crate::keys::LEASES`].
pub const RECONCILER_LEASE: &str = "reconciler";
/// The HTTP header on which a reconciler sends its term's fencing token
/// with each step.
pub const FENCING_TOKEN_HEADER: &str = "draas-fencing-token";
/// Longest holder name accepted.
pub const MAX_HOLDER_LEN: usize = 128;

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The record's format version ([`crate::records::RECORD_VERSION`]; 0:
    /// written before records carried one).
    #[serde(default)]
    pub version: u32,
    /// Who holds it.
    pub holder: String,
    /// The fencing token of this term.
    pub token: u64,
    /// When this term began.
    pub acquired_at: DateTime<Utc>,
    /// When it runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// Why a lease was not granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held(pub Lease);

impl Lease {
    /// Whether it still holds at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }

    /// Claims or renews the lease for `holder` until `now + ttl`, given the
    /// `current` one: renewed (same token) while `holder` holds it, a new
    /// term (the next token) when it ran out or was never taken, refused
    /// while someone else holds it.
    pub fn claim(
        current: Option<&Lease>,
        holder: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<Lease, Held> {
        match current {
            Some(lease) if lease.is_live(now) && lease.holder == holder => Ok(Lease {
                expires_at: now + ttl,
                ..lease.clone()
            }),
            Some(lease) if lease.is_live(now) => Err(Held(lease.clone())),
            _ => Ok(Lease {
                version: crate::records::RECORD_VERSION,
                holder: holder.to_string(),
                token: current.map_or(1, |l| l.token + 1),
                acquired_at: now,
                expires_at: now + ttl,
            }),
        }
    }

    /// The lease after `holder` gives it up at `now` (the token stays, so
    /// the next term's is larger), or `None` when `holder` does not hold it.
    pub fn release(&self, holder: &str, now: DateTime<Utc>) -> Option<Lease> {
        (self.holder == holder && self.is_live(now)).then(|| Lease {
            expires_at: now,
            ..self.clone()
        })
    }

    /// Whether a step or command carrying `token` may act at `now`: only
    /// the live lease's own token.
    pub fn admits(&self, token: u64, now: DateTime<Utc>) -> bool {
        token == self.token && self.is_live(now)
    }
}

/// Checks a lease holder's name: 1 to [`MAX_HOLDER_LEN`] characters of
/// `[A-Za-z0-9._:-]`.
pub fn validate_holder(holder: &str) -> Result<(), String> {
    if holder.is_empty() || holder.len() > MAX_HOLDER_LEN {
        return Err(format!("1 to {MAX_HOLDER_LEN} characters"));
    }
    if let Some(c) = holder
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "'{c}' is not allowed (letters, digits, '.', '_', ':' and '-' are)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn ttl() -> chrono::Duration {
        chrono::Duration::seconds(10)
    }

    #[test]
    fn the_first_claim_gets_token_one_and_renewals_keep_it() {
        let first = Lease::claim(None, "a", ttl(), at(0)).unwrap();
        assert_eq!((first.holder.as_str(), first.token), ("a", 1));
        assert_eq!(first.expires_at, at(10));
        let renewed = Lease::claim(Some(&first), "a", ttl(), at(5)).unwrap();
        assert_eq!(renewed.token, 1);
        assert_eq!(renewed.acquired_at, at(0));
        assert_eq!(renewed.expires_at, at(15));
    }

    #[test]
    fn a_live_lease_is_refused_to_others_and_a_lapsed_one_starts_a_new_term() {
        let first = Lease::claim(None, "a", ttl(), at(0)).unwrap();
        assert_eq!(
            Lease::claim(Some(&first), "b", ttl(), at(9)),
            Err(Held(first.clone()))
        );
        let taken = Lease::claim(Some(&first), "b", ttl(), at(10)).unwrap();
        assert_eq!((taken.holder.as_str(), taken.token), ("b", 2));
        // The old holder coming back after it lapsed gets a new term too.
        let lapsed = Lease::claim(Some(&taken), "b", ttl(), at(30)).unwrap();
        assert_eq!(lapsed.token, 3);
        assert_eq!(lapsed.acquired_at, at(30));
    }

    #[test]
    fn only_the_live_terms_token_is_admitted() {
        let first = Lease::claim(None, "a", ttl(), at(0)).unwrap();
        let second = Lease::claim(Some(&first), "b", ttl(), at(11)).unwrap();
        assert!(second.admits(2, at(12)));
        assert!(!second.admits(1, at(12)), "the old term's token");
        assert!(!second.admits(3, at(12)), "a token never given out");
        assert!(!second.admits(2, at(21)), "after it ran out");
    }

    #[test]
    fn releasing_hands_over_at_once_with_a_larger_token() {
        let first = Lease::claim(None, "a", ttl(), at(0)).unwrap();
        assert_eq!(first.release("b", at(1)), None);
        let released = first.release("a", at(1)).unwrap();
        assert!(!released.is_live(at(1)));
        let next = Lease::claim(Some(&released), "b", ttl(), at(1)).unwrap();
        assert_eq!(next.token, 2);
    }

    #[test]
    fn holder_names_are_checked() {
        assert!(validate_holder("host-1:4242.abc_d").is_ok());
        for bad in ["", "a b", "a/b", "x\n", &"a".repeat(MAX_HOLDER_LEN + 1)] {
            assert!(validate_holder(bad).is_err(), "{bad:?}");
        }
    }
}
