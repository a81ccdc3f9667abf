//! `draas-runtime validate`: a readable report on stdout, exit 0 or 1.

use std::path::Path;
use std::process::ExitCode;

use crate::load::{load, load_env, LoadError};

/// Prints the report for `path` (or environment variable `env`) and
/// returns the exit code.
pub fn run(path: &Path, env: Option<&str>, port: Option<u16>) -> ExitCode {
    let loaded = match env {
        Some(name) => {
            println!("Validating ${name}");
            load_env(name)
        }
        None => {
            println!("Validating {}", path.display());
            load(path)
        }
    };
    let mut loaded = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            let what = match e {
                LoadError::Read { .. } => "File",
                LoadError::Parse { .. } => "Structure",
            };
            println!("[ERR]  {what}: {e}");
            println!("Summary: invalid (1 error)");
            return ExitCode::FAILURE;
        }
    };
    if let Some(port) = port {
        loaded.config.port = port;
    }
    let config = &loaded.config;
    println!("[OK]   Structure: YAML parsed, no unknown keys");
    for key in config.ignored_keys() {
        println!("[WARN] {key}: ignored (plugins are linked into this runtime)");
    }
    println!(
        "[OK]   Server: id {}, API on {}:{}, logLevel {}",
        config.id.as_deref().unwrap_or("<random per start>"),
        config.host,
        config.port,
        config.log_level
    );
    let issues = loaded.issues();
    for source in &config.sources {
        println!("       source   {:<20} kind {}", source.id, source.kind);
    }
    for query in &config.queries {
        println!(
            "       query    {:<20} {:?}, autoStart {}",
            query.id, query.query_language, query.auto_start
        );
    }
    for reaction in &config.reactions {
        println!(
            "       reaction {:<20} kind {} <- {}",
            reaction.id,
            reaction.kind,
            reaction.queries.join(", ")
        );
    }
    for query in config.queries.iter().filter(|q| !q.auto_start) {
        println!(
            "[WARN] query '{}' has no `autoStart: true` and will stay stopped",
            query.id
        );
    }
    for issue in &issues {
        println!("[ERR]  {issue}");
    }
    if issues.is_empty() {
        println!("Summary: valid");
        ExitCode::SUCCESS
    } else {
        println!("Summary: invalid ({} error(s))", issues.len());
        ExitCode::FAILURE
    }
}
