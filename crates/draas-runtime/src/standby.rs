//! Standby: a runtime process started ahead of need, waiting to be told
//! which server to run.
//!
//! Starting a process of this binary costs ~2 ms before `main` (exec, the
//! self-relocation of a 40 MB static-pie binary, the first page faults),
//! about a third of a server's whole start. DRaaS's Process worker keeps one
//! runtime started with `--standby`, so that a start, and above all the
//! restart after a crash, does not wait for that.
//!
//! A runtime in standby does nothing but read its stdin (a pipe from the
//! worker, or a container's stdin the Docker worker attaches to) until one
//! JSON order has come. What it reads is a [`Go`]: everything a cold start
//! would have been given (arguments and, where they differ from what it
//! was started with, environment and output files). It then becomes that
//! start: its output goes to the files, its environment is replaced, and it
//! parses the arguments as if they were its own. No thread exists before
//! then, so replacing the environment is safe. Reading the end of its stdin
//! before an order (the worker stopped or dropped it) ends it quietly.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;

/// The flag that puts a runtime in standby; only ever the first argument.
pub const FLAG: &str = "--standby";

/// The most an order may hold; more is not an order from a worker.
const MAX_ORDER: u64 = 1024 * 1024;

/// The order that ends a standby: run this server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Go {
    /// The arguments after the program name, as a cold start gets them.
    pub args: Vec<String>,
    /// The whole environment of the server; absent: the one it has (a
    /// container's, set when it was created for this server).
    #[serde(default)]
    pub env: Option<Vec<(String, String)>>,
    /// Where stdout goes (appended to, created if missing); absent: where
    /// it goes now.
    #[serde(default)]
    pub stdout: Option<PathBuf>,
    /// Where stderr goes (appended to, created if missing); absent: where
    /// it goes now.
    #[serde(default)]
    pub stderr: Option<PathBuf>,
}

/// Waits for the order on stdin. `Ok(None)`: stdin ended without one.
/// Meanwhile it works in `/`, keeping no directory of its starter busy
/// (an order always names the server's own, `--workdir`).
pub fn wait() -> Result<Option<Go>, String> {
    std::env::set_current_dir("/").map_err(|e| format!("cannot work in /: {e}"))?;
    // The order ends where its JSON value does: the writer need not close
    // the stream (a container's attached stdin stays open). What follows
    // it is never read; the server's stdin is replaced anyway.
    let input = std::io::stdin().lock().take(MAX_ORDER);
    let go = match serde_json::Deserializer::from_reader(input)
        .into_iter::<Go>()
        .next()
    {
        None => return Ok(None),
        Some(Ok(go)) => go,
        Some(Err(e)) => {
            return Err(format!(
                "invalid standby order (one JSON object of at most {MAX_ORDER} bytes): {e}"
            ))
        }
    };
    if go.args.iter().any(|a| a == FLAG) {
        return Err(format!("a standby order cannot ask for {FLAG} again"));
    }
    Ok(Some(go))
}

impl Go {
    /// Becomes the ordered start: output to its files, stdin from
    /// `/dev/null`, its environment; returns the command line to parse.
    /// Must run before any thread is started.
    pub fn apply(self, program: OsString) -> Result<Vec<OsString>, String> {
        let open = |path: &PathBuf| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))
        };
        // stderr first: any later failure is then written where the
        // worker reads a server's last words.
        if let Some(stderr) = &self.stderr {
            rustix::stdio::dup2_stderr(open(stderr)?)
                .map_err(|e| format!("cannot redirect stderr: {e}"))?;
        }
        if let Some(stdout) = &self.stdout {
            rustix::stdio::dup2_stdout(open(stdout)?)
                .map_err(|e| format!("cannot redirect stdout: {e}"))?;
        }
        let null =
            std::fs::File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
        rustix::stdio::dup2_stdin(null).map_err(|e| format!("cannot redirect stdin: {e}"))?;
        if let Some(env) = &self.env {
            if let Some((name, _)) = env.iter().find(|(name, value)| {
                name.is_empty() || name.contains(['=', '\0']) || value.contains('\0')
            }) {
                return Err(format!("invalid environment variable '{name}'"));
            }
            for (name, _) in std::env::vars_os() {
                std::env::remove_var(name);
            }
            for (name, value) in env {
                std::env::set_var(name, value);
            }
        }
        Ok(std::iter::once(program)
            .chain(self.args.into_iter().map(OsString::from))
            .collect())
    }
}
