//! How a server ended, and waiting for it: every platform reports exits
//! through an [`ExitWatch`] (a child handle or pidfd, the Engine's event
//! stream, a Pod watch), so the generic driver reacts to all of them alike.

use draas_core::instance::Reason;
use tokio::sync::watch;

/// How a server ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, when known.
    pub code: Option<i32>,
    /// Signal that killed it, when known.
    pub signal: Option<i32>,
    /// Whether it was killed for running out of memory.
    pub oom_killed: bool,
    /// For humans: "exited with code 1", "was killed by signal 9 (SIGKILL)".
    pub description: String,
    /// Why, when the platform knows better than an exit status (a
    /// Kubernetes Deployment deleted behind DRaaS's back).
    pub cause: Option<Reason>,
}

impl Exit {
    /// An exit with code `code`.
    pub fn code(code: i32) -> Self {
        Self {
            code: Some(code),
            signal: None,
            oom_killed: false,
            description: format!("exited with code {code}"),
            cause: None,
        }
    }

    /// Killed by `signal`.
    pub fn signal(signal: i32) -> Self {
        Self {
            code: None,
            signal: Some(signal),
            oom_killed: false,
            description: format!("was killed by signal {signal}{}", signal_name(signal)),
            cause: None,
        }
    }

    /// An exit known only by `description`.
    pub fn unknown(description: impl Into<String>) -> Self {
        Self {
            code: None,
            signal: None,
            oom_killed: false,
            description: description.into(),
            cause: None,
        }
    }

    /// The server ended because of `cause`, as `description` says.
    pub fn because(cause: Reason, description: impl Into<String>) -> Self {
        Self {
            cause: Some(cause),
            ..Self::unknown(description)
        }
    }

    /// The reason a crash with this exit is reported with.
    pub fn reason(&self) -> Reason {
        if let Some(cause) = self.cause {
            cause
        } else if self.oom_killed {
            Reason::OomKilled
        } else if self.signal.is_some() {
            Reason::KilledBySignal
        } else {
            Reason::ExitedWithCode
        }
    }
}

/// ` (SIGKILL)` for the common signals, empty otherwise.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

/// Where a platform reports a server's exit, once.
#[derive(Debug)]
pub struct ExitNotifier(watch::Sender<Option<Exit>>);

impl ExitNotifier {
    /// Reports the exit (a second report is ignored).
    pub fn exited(&self, exit: Exit) {
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(exit);
            true
        });
    }

    /// Whether nobody watches any more.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// Watches one server's exit. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ExitWatch(watch::Receiver<Option<Exit>>);

/// A notifier and its watch.
pub fn exit_channel() -> (ExitNotifier, ExitWatch) {
    let (tx, rx) = watch::channel(None);
    (ExitNotifier(tx), ExitWatch(rx))
}

impl ExitWatch {
    /// The exit, if it happened.
    pub fn current(&self) -> Option<Exit> {
        self.0.borrow().clone()
    }

    /// Whether the server has exited.
    pub fn has_exited(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Waits until the server exits and returns how. If its notifier goes
    /// away without a report, the platform lost track of the server.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.0.clone();
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone(),
            Err(_) => None,
        };
        exit.unwrap_or_else(|| Exit::unknown("exited (its platform stopped watching it)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_exit_report_wins_and_reasons_follow_the_exit() {
        let (notifier, watch) = exit_channel();
        assert!(!watch.has_exited());
        notifier.exited(Exit::signal(9));
        notifier.exited(Exit::code(0));
        let exit = watch.wait().await;
        assert_eq!(exit.reason(), Reason::KilledBySignal);
        assert!(exit.description.contains("SIGKILL"), "{}", exit.description);
        assert_eq!(Exit::code(3).reason(), Reason::ExitedWithCode);
        let oom = Exit {
            oom_killed: true,
            ..Exit::code(137)
        };
        assert_eq!(oom.reason(), Reason::OomKilled);
    }

    #[tokio::test]
    async fn a_vanished_notifier_ends_the_wait() {
        let (notifier, watch) = exit_channel();
        drop(notifier);
        assert!(watch.wait().await.description.contains("stopped watching"));
    }
}
