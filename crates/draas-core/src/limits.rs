//! Time limits, from one place.
//!
//! A request about an instance may wait for a worker's command and then
//! for a state (`?wait=`); its `Idempotency-Key` reservation must outlive
//! the request, and the clients (CLI, reconciler) must wait at least as
//! long as the request may run. If any of these disagreed, a retry could
//! run a command twice (a reservation expired while the first request still
//! ran) or a client could give up on a command that then runs anyway. So
//! each limit is derived from the ones below it:
//!
//! ```text
//! start deadline    = max(command timeout, start timeout + 10 s)
//! stop deadline     = max(command timeout, shutdown timeout + 15 s)
//! restart deadline  = start deadline + stop deadline          ≤ LONGEST_COMMAND
//! instance route    ≥ LONGEST_COMMAND + LONGEST_WAIT + margin
//! reservation       > instance route;  client timeout > instance route
//! ```
//!
//! The inputs are capped ([`MAX_START_TIMEOUT_SECONDS`],
//! [`MAX_SHUTDOWN_TIMEOUT_SECONDS`], [`MAX_COMMAND_TIMEOUT_SECONDS`]) and
//! every deadline is computed with the caps applied, so a stored record
//! from an older version with a larger value still fits.

use std::time::Duration;

/// Longest start timeout (`serverConfiguration.startTimeoutSeconds`).
pub const MAX_START_TIMEOUT_SECONDS: u32 = 600;
/// Longest shutdown grace (`serverConfiguration.shutdownTimeoutSeconds`).
pub const MAX_SHUTDOWN_TIMEOUT_SECONDS: u32 = 600;
/// Longest wait for a worker's reply to a command that does not start or
/// stop a server (`draas serve --command-timeout`).
pub const MAX_COMMAND_TIMEOUT_SECONDS: u64 = 300;
/// Past the start timeout: the worker's report on its way back.
const START_MARGIN_SECONDS: u64 = 10;
/// Past the grace: up to 10 s after SIGKILL, then the report.
const STOP_MARGIN_SECONDS: u64 = 15;
/// Longest `?wait=` after a command.
pub const LONGEST_WAIT_SECONDS: u64 = 300;

/// The longest any command may take (a restart at the caps).
pub const LONGEST_COMMAND_SECONDS: u64 = MAX_START_TIMEOUT_SECONDS as u64
    + START_MARGIN_SECONDS
    + MAX_SHUTDOWN_TIMEOUT_SECONDS as u64
    + STOP_MARGIN_SECONDS;
/// How long a request about one instance may run: its command, then its
/// wait, then a margin for the store writes around them.
pub const INSTANCE_ROUTE_SECONDS: u64 = LONGEST_COMMAND_SECONDS + LONGEST_WAIT_SECONDS + 30;
/// How long an `Idempotency-Key` reserved by a request without an answer
/// yet holds: longer than the request may run, so a retry never runs the
/// command a second time while the first still runs; short enough that a
/// control plane that died mid-request does not block the key for a day.
pub const IDEMPOTENCY_RESERVATION_SECONDS: u64 = INSTANCE_ROUTE_SECONDS + 60;
/// How long a client of the API (the CLI, the reconciler) waits for an
/// answer: past the route's own limit, so the route answers first.
pub const CLIENT_TIMEOUT_SECONDS: u64 = INSTANCE_ROUTE_SECONDS + 30;

const _: () = assert!(IDEMPOTENCY_RESERVATION_SECONDS > INSTANCE_ROUTE_SECONDS);
const _: () = assert!(CLIENT_TIMEOUT_SECONDS > INSTANCE_ROUTE_SECONDS);
const _: () = assert!(INSTANCE_ROUTE_SECONDS > LONGEST_COMMAND_SECONDS + LONGEST_WAIT_SECONDS);
const _: () = assert!(MAX_COMMAND_TIMEOUT_SECONDS < LONGEST_COMMAND_SECONDS);

/// [`INSTANCE_ROUTE_SECONDS`] as a duration.
pub const INSTANCE_ROUTE: Duration = Duration::from_secs(INSTANCE_ROUTE_SECONDS);
/// [`CLIENT_TIMEOUT_SECONDS`] as a duration.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(CLIENT_TIMEOUT_SECONDS);
/// [`IDEMPOTENCY_RESERVATION_SECONDS`] as a duration.
pub const IDEMPOTENCY_RESERVATION: Duration = Duration::from_secs(IDEMPOTENCY_RESERVATION_SECONDS);
/// [`LONGEST_WAIT_SECONDS`] as a duration.
pub const LONGEST_WAIT: Duration = Duration::from_secs(LONGEST_WAIT_SECONDS);

/// The command timeout, capped.
pub fn command_timeout(configured: Duration) -> Duration {
    configured.min(Duration::from_secs(MAX_COMMAND_TIMEOUT_SECONDS))
}

/// How long a start may take: the server's start timeout (capped) and
/// a margin, and never less than the command timeout.
pub fn start_deadline(start_timeout_seconds: u32, command: Duration) -> Duration {
    let start = u64::from(start_timeout_seconds.min(MAX_START_TIMEOUT_SECONDS));
    command_timeout(command).max(Duration::from_secs(start + START_MARGIN_SECONDS))
}

/// How long a stop (or a delete) may take: the grace (capped), SIGKILL
/// and a margin, and never less than the command timeout.
pub fn stop_deadline(shutdown_timeout_seconds: u32, command: Duration) -> Duration {
    let grace = u64::from(shutdown_timeout_seconds.min(MAX_SHUTDOWN_TIMEOUT_SECONDS));
    command_timeout(command).max(Duration::from_secs(grace + STOP_MARGIN_SECONDS))
}

/// How long a restart may take: a stop, then a start.
pub fn restart_deadline(
    start_timeout_seconds: u32,
    shutdown_timeout_seconds: u32,
    command: Duration,
) -> Duration {
    start_deadline(start_timeout_seconds, command)
        + stop_deadline(shutdown_timeout_seconds, command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_fits_in_its_route_and_every_route_in_its_reservation() {
        let command = Duration::from_secs(u64::MAX / 4);
        for start in [0, 1, 30, 600, 601, u32::MAX] {
            for shutdown in [0, 1, 10, 600, u32::MAX] {
                let longest = [
                    start_deadline(start, command),
                    stop_deadline(shutdown, command),
                    restart_deadline(start, shutdown, command),
                ]
                .into_iter()
                .max()
                .unwrap();
                assert!(longest <= Duration::from_secs(LONGEST_COMMAND_SECONDS));
                assert!(
                    longest + LONGEST_WAIT < INSTANCE_ROUTE,
                    "{start} {shutdown}"
                );
            }
        }
        assert!(INSTANCE_ROUTE < IDEMPOTENCY_RESERVATION);
        assert!(INSTANCE_ROUTE < CLIENT_TIMEOUT);
    }

    #[test]
    fn deadlines_follow_the_servers_timeouts_above_the_command_timeout() {
        let command = Duration::from_secs(30);
        assert_eq!(start_deadline(5, command), command);
        assert_eq!(start_deadline(120, command), Duration::from_secs(130));
        assert_eq!(stop_deadline(100, command), Duration::from_secs(115));
        assert_eq!(
            restart_deadline(120, 100, command),
            Duration::from_secs(245)
        );
        assert_eq!(
            command_timeout(Duration::from_secs(10_000)),
            Duration::from_secs(MAX_COMMAND_TIMEOUT_SECONDS)
        );
    }
}
