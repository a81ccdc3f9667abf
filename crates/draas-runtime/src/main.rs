//! # draas-runtime
//!
//! The Drasi runtime bundled with DRaaS: one Drasi server (sources →
//! continuous queries → reactions) from a drasi-server YAML file, with the
//! plugins linked in statically. It is the default executable of the Process
//! platform and the content of the Docker/Kubernetes image.
//!
//! ```text
//! draas-runtime --config server.yaml [--port N]     run a server
//! draas-runtime --config-env VAR                    the YAML from an environment variable
//! draas-runtime validate --config server.yaml       check a file (exit 0/1)
//! draas-runtime release-replication-slots -c FILE   drop the slots of its
//!                                                   postgres sources (DRaaS)
//! draas-runtime --standby                           wait for the start's
//!                                                   arguments on stdin (DRaaS)
//! ```
//!
//! Startup matches drasi-server: every component is created and started
//! before the API binds, so the first `/health` answer means "started".
//! Any startup failure prints one `Error: ...` line on stderr naming the
//! component and exits 1 without binding. SIGINT and SIGTERM both stop
//! reactions, queries, then sources and exit 0.

mod api;
mod load;
mod locate;
mod serve;
mod slots;
mod standby;
mod validate;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use draas_core::config::ConfigValue;

/// A drasi-server-compatible Drasi runtime with its plugins linked in.
#[derive(Parser)]
#[command(name = "draas-runtime", version, about)]
struct Cli {
    /// Configuration file (drasi-server YAML schema).
    #[arg(short, long, global = true, default_value = "config/server.yaml")]
    config: PathBuf,
    /// Read the configuration from this environment variable instead of a
    /// file (how a container is given it without a file).
    #[arg(long, global = true, value_name = "VAR")]
    config_env: Option<String>,
    /// API port; overrides `port` in the file.
    #[arg(short, long, global = true)]
    port: Option<u16>,
    /// Longest time a graceful stop may take before the runtime gives up
    /// waiting for components and exits 1.
    #[arg(long, global = true, default_value_t = 20, value_name = "SECONDS")]
    shutdown_timeout: u64,
    /// Work in this directory (relative paths, `./data`, and a relative
    /// `--config` resolve against it), as if started there. DRaaS's Process
    /// worker says so rather than start the runtime in it: a working
    /// directory set by the parent makes a static binary fork instead of
    /// spawn, and fork copies the worker's whole address space.
    #[arg(long, global = true, value_name = "DIR")]
    workdir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Check a configuration file and print a report; exit 1 on any error.
    Validate,
    /// Drop the replication slots of the configuration's postgres sources
    /// (references resolve in this environment); exit 1 when one cannot be.
    ReleaseReplicationSlots,
}

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 2 && args[1] == standby::FLAG {
        let program = args.swap_remove(0);
        let order = standby::wait().and_then(|go| go.map(|go| go.apply(program)).transpose());
        args = match order {
            Ok(Some(args)) => args,
            // Nobody will order a start: the worker went away.
            Ok(None) => return ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("Error: {message}");
                return ExitCode::FAILURE;
            }
        };
    }
    let mut cli = Cli::parse_from(args);
    if let Some(dir) = &cli.workdir {
        if let Err(e) = std::env::set_current_dir(dir) {
            eprintln!("Error: cannot work in {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    match cli.command.take().unwrap_or(Command::Run) {
        Command::Validate => validate::run(&cli.config, cli.config_env.as_deref(), cli.port),
        Command::ReleaseReplicationSlots => match release(cli) {
            Ok(released) => {
                println!("released: {}", released.join(", "));
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("Error: {message}");
                ExitCode::FAILURE
            }
        },
        Command::Run => match run(cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("Error: {message}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Loads and validates the file, then runs the server on a Tokio runtime.
fn run(cli: Cli) -> Result<(), String> {
    let loaded = match &cli.config_env {
        Some(name) => load::load_env(name),
        None => load::load(&cli.config),
    };
    let mut loaded = loaded.map_err(|e| e.to_string())?;
    if let Some(port) = cli.port {
        loaded.config.port = Some(ConfigValue::Static(port));
    }
    if let Some(e) = serve::invalid(&loaded) {
        return Err(e.to_string());
    }
    // Without an id, drasi-server makes up a new one on every start.
    let default_id = uuid::Uuid::new_v4().to_string();
    // drasi-server semantics: `logLevel` applies when RUST_LOG is unset. Set
    // here, before any thread exists.
    if std::env::var_os("RUST_LOG").is_none() {
        let level = loaded
            .config
            .log_level
            .resolve(&|name| std::env::var(name).ok(), "a log level")
            .map_err(|e| format!("logLevel: {e}"))?;
        std::env::set_var("RUST_LOG", level.to_ascii_lowercase());
    }
    // Log files and pipes get plain text; drasi-lib's formatter honours NO_COLOR.
    if !std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        std::env::set_var("NO_COLOR", "1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let shutdown_timeout = std::time::Duration::from_secs(cli.shutdown_timeout);
    runtime
        .block_on(serve::run(loaded, default_id, shutdown_timeout))
        .map_err(|e| e.to_string())
}

/// `release-replication-slots`: the slots of the file's postgres sources.
fn release(cli: Cli) -> Result<Vec<String>, String> {
    let loaded = match &cli.config_env {
        Some(name) => load::load_env(name),
        None => load::load(&cli.config),
    }
    .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(slots::release(&[], &loaded.config))
}
