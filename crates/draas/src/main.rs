//! # draas
//!
//! The DRaaS binary: the only crate that names concrete backends.
//!
//! ```text
//! draas up                          control plane + Process worker, embedded bus and store
//! draas serve  --redis URL          control plane only (distributed mode)
//! draas worker --redis URL --platform process|docker
//! draas reconcile --control-plane URL
//! draas docker-daemon --control-plane URL
//! draas keys create --role admin|operator|viewer|agent
//! draas image build
//! ```
//!
//! `main` parses the configuration, installs logging and hands over to the
//! mode's `run`; everything is built and wired in [`wiring`].

mod cli;
mod config;
mod keys;
mod reconciler_port;
mod shutdown;
mod wiring;

use std::process::ExitCode;

use clap::Parser;

use config::{Cli, Mode};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Client commands print for people and scripts, not log lines.
    if let Some(code) = client_command(&cli) {
        return code;
    }
    install_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.mode {
            Mode::Up(args) => wiring::up(args).await,
            Mode::Serve(args) => wiring::serve(args).await,
            Mode::Worker(args) => wiring::worker(args).await,
            Mode::Reconcile(args) => wiring::reconcile(args).await,
            Mode::DockerDaemon(args) => wiring::docker_daemon(args).await,
            Mode::Keys { command } => keys::run(command).await,
            Mode::Instance { .. }
            | Mode::Config { .. }
            | Mode::Status { .. }
            | Mode::Events { .. }
            | Mode::Query { .. }
            | Mode::Platforms { .. }
            | Mode::Context { .. }
            | Mode::Completions { .. } => unreachable_client(),
            Mode::Image {
                command: config::ImageCommand::Build(args),
            } => wiring::image_build(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a client command (instance, platforms, context, completions) and
/// returns its exit code; `None` for the other modes.
fn client_command(cli: &Cli) -> Option<ExitCode> {
    match &cli.mode {
        Mode::Instance { command, target } => {
            Some(on_runtime(cli::instance(command.clone(), target.clone())))
        }
        Mode::Platforms { target } => Some(on_runtime(cli::platforms(target.clone()))),
        Mode::Config { command, target } => {
            Some(on_runtime(cli::config(command.clone(), target.clone())))
        }
        Mode::Status { command, target } => {
            Some(on_runtime(cli::status(command.clone(), target.clone())))
        }
        Mode::Events { follow, target } => Some(on_runtime(cli::events(*follow, target.clone()))),
        Mode::Query { command, target } => {
            Some(on_runtime(cli::query(command.clone(), target.clone())))
        }
        Mode::Context { command } => Some(cli::context(command.clone())),
        Mode::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            // Into a buffer first: a closed pipe (`| head`) is not a panic.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "draas", &mut script);
            let _ = std::io::stdout().write_all(&script);
            Some(ExitCode::SUCCESS)
        }
        _ => None,
    }
}

/// Runs a client command's future on a runtime of its own.
fn on_runtime(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(work),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Client commands are answered before the server modes start.
fn unreachable_client() -> anyhow::Result<()> {
    anyhow::bail!("a client command reached the server dispatch")
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or
/// as JSON lines.
fn install_logging(format: config::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // Every line carries the fields of all its spans (trace_id,
        // instance, command, worker).
        config::LogFormat::Json => builder.json().with_span_list(true).init(),
    }
}
