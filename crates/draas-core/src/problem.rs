//! The `code` of the API's problem answers (`application/problem+json`), as
//! a type: what a client acts on. The control plane writes these codes;
//! its clients (the CLI, the reconciler, the Docker status daemon, through
//! `draas-client`) read them back into [`ProblemCode`], here and only here,
//! so no client matches code strings of its own.

use std::fmt;

/// A problem's `code`: the ones a client acts on by name, and any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemCode {
    /// The thing named does not exist.
    NotFound,
    /// A reconciler step planned on a record that changed since.
    StalePlan,
    /// A reconciler whose lease moved on (its fencing token is old).
    StaleFence,
    /// Another holder has the reconciler lease.
    LeaseHeld,
    /// No live worker can reach the instance's server now.
    NoLiveWorker,
    /// The worker refused a start the instance no longer asks for.
    Superseded,
    /// An event cursor the server does not know (or no longer keeps).
    InvalidCursor,
    /// The record kept changing; retry.
    ConcurrentUpdate,
    /// The request was refused by the rate limit.
    RateLimited,
    /// No key, or one the server does not know.
    Unauthenticated,
    /// The key's role may not do this.
    Forbidden,
    /// Any other code (the string as sent).
    Other(String),
}

impl ProblemCode {
    /// The code as sent on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ProblemCode::NotFound => "NOT_FOUND",
            ProblemCode::StalePlan => "STALE_PLAN",
            ProblemCode::StaleFence => "STALE_FENCE",
            ProblemCode::LeaseHeld => "LEASE_HELD",
            ProblemCode::NoLiveWorker => "NO_LIVE_WORKER",
            ProblemCode::Superseded => "SUPERSEDED",
            ProblemCode::InvalidCursor => "INVALID_CURSOR",
            ProblemCode::ConcurrentUpdate => "CONCURRENT_UPDATE",
            ProblemCode::RateLimited => "RATE_LIMITED",
            ProblemCode::Unauthenticated => "UNAUTHENTICATED",
            ProblemCode::Forbidden => "FORBIDDEN",
            ProblemCode::Other(code) => code,
        }
    }

    /// The code a problem answer names.
    pub fn parse(code: &str) -> Self {
        match code {
            "NOT_FOUND" => ProblemCode::NotFound,
            "STALE_PLAN" => ProblemCode::StalePlan,
            "STALE_FENCE" => ProblemCode::StaleFence,
            "LEASE_HELD" => ProblemCode::LeaseHeld,
            "NO_LIVE_WORKER" => ProblemCode::NoLiveWorker,
            "SUPERSEDED" => ProblemCode::Superseded,
            "INVALID_CURSOR" => ProblemCode::InvalidCursor,
            "CONCURRENT_UPDATE" => ProblemCode::ConcurrentUpdate,
            "RATE_LIMITED" => ProblemCode::RateLimited,
            "UNAUTHENTICATED" => ProblemCode::Unauthenticated,
            "FORBIDDEN" => ProblemCode::Forbidden,
            other => ProblemCode::Other(other.to_string()),
        }
    }
}

impl fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_code_reads_back_as_itself_and_others_are_kept_as_sent() {
        for code in [
            ProblemCode::NotFound,
            ProblemCode::StalePlan,
            ProblemCode::StaleFence,
            ProblemCode::LeaseHeld,
            ProblemCode::NoLiveWorker,
            ProblemCode::Superseded,
            ProblemCode::InvalidCursor,
            ProblemCode::ConcurrentUpdate,
            ProblemCode::RateLimited,
            ProblemCode::Unauthenticated,
            ProblemCode::Forbidden,
        ] {
            assert_eq!(ProblemCode::parse(code.as_str()), code);
        }
        assert_eq!(
            ProblemCode::parse("PORT_IN_USE"),
            ProblemCode::Other("PORT_IN_USE".into())
        );
        assert_eq!(ProblemCode::parse("PORT_IN_USE").as_str(), "PORT_IN_USE");
    }
}
