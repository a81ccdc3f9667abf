//! `draas-runtime validate`: a readable report on stdout, exit 0 or 1.

use std::path::Path;
use std::process::ExitCode;

use draas_core::config::ConfigValue;

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
        loaded.config.port = Some(ConfigValue::Static(port));
    }
    let config = &loaded.config;
    println!("[OK]   Structure: YAML parsed, no unknown keys");
    let shown = |value: Option<&ConfigValue<String>>, absent: &str| match value {
        None => absent.to_string(),
        Some(v) => serde_json::to_string(v).unwrap_or_default(),
    };
    println!(
        "[OK]   Server: id {}, API on {}:{}, logLevel {}",
        shown(config.id.as_ref(), "<random per start>"),
        shown(config.host.as_ref(), "0.0.0.0"),
        config
            .port
            .as_ref()
            .and_then(|p| serde_json::to_string(p).ok())
            .unwrap_or_else(|| "8080".into()),
        shown(Some(&config.log_level), "info"),
    );
    let (issues, warnings) = loaded.report();
    for lib in config.lib_instances() {
        if lib.index.is_some() {
            println!("       instance {}", shown(lib.id, "<random per start>"));
        }
        for source in lib.sources {
            println!("       source   {:<20} kind {}", source.id, source.kind);
        }
        for query in lib.queries {
            println!(
                "       query    {:<20} {:?}, autoStart {}",
                query.id, query.query_language, query.auto_start
            );
        }
        for reaction in lib.reactions {
            println!(
                "       reaction {:<20} kind {} <- {}",
                reaction.id,
                reaction.kind,
                reaction.queries.join(", ")
            );
        }
        for query in lib.queries.iter().filter(|q| !q.auto_start) {
            println!(
                "[WARN] query '{}' has no `autoStart: true` and will stay stopped",
                query.id
            );
        }
    }
    for warning in &warnings {
        println!("[WARN] {warning}");
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
