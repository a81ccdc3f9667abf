//! W3C Trace Context (`traceparent`): the trace id an HTTP request brings
//! (or is given) travels in the command envelope to the worker, whose log
//! lines for the command name it, and comes back in the answer's
//! `traceparent` header.

use std::fmt;

/// A parsed `traceparent`: version 00, trace id, parent (span) id, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: String,
    parent_id: String,
    flags: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // A failing random source still yields a usable (if unremarkable) id;
    // the all-zero id is invalid, so the last byte is forced non-zero.
    let _ = getrandom::fill(&mut buf);
    if let Some(last) = buf.last_mut() {
        *last |= 1;
    }
    hex::encode(buf)
}

impl TraceParent {
    /// Parses a `traceparent` header; `None` when it is not a valid one
    /// (then a new trace starts, as the spec says).
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let valid = version == "00"
            && parts.next().is_none()
            && is_hex(trace_id, 32)
            && trace_id != "0".repeat(32)
            && is_hex(parent_id, 16)
            && parent_id != "0".repeat(16)
            && is_hex(flags, 2);
        valid.then(|| Self {
            trace_id: trace_id.to_string(),
            parent_id: parent_id.to_string(),
            flags: flags.to_string(),
        })
    }

    /// A new trace.
    pub fn new_root() -> Self {
        Self {
            trace_id: random_hex(16),
            parent_id: random_hex(8),
            flags: "01".into(),
        }
    }

    /// The same trace, with a new span of ours as the parent.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            parent_id: random_hex(8),
            flags: self.flags.clone(),
        }
    }

    /// The trace id (32 hex digits).
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{}", self.trace_id, self.parent_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_bad_ones_do_not() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(good).unwrap();
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.to_string(), good);
        let child = parsed.child();
        assert_eq!(child.trace_id(), parsed.trace_id());
        assert_ne!(child.to_string(), good);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        let root = TraceParent::new_root();
        assert!(TraceParent::parse(&root.to_string()).is_some());
    }
}
