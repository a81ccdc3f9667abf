//! Reading and checking a configuration file.
//!
//! Unlike drasi-server, a missing file is an error: a manager that points the
//! runtime at a file it did not write wants to hear about it, not get an
//! empty server.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use draas_core::config::{parse_yaml, ConfigIssue, DrasiServerConfig};
use draas_core::ports::{CheckTarget, Runtime};

use crate::locate::{locate, Position};

/// A configuration file, read and parsed.
pub struct LoadedConfig {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text, kept to locate issues.
    pub text: String,
    /// The parsed configuration.
    pub config: DrasiServerConfig,
}

/// The file could not be read or is not a drasi-server configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Missing or unreadable.
    #[error("cannot read config file '{}': {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or an unknown key, or a value of the wrong type.
    #[error("invalid config file '{}': {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the key's name and position.
        message: String,
    },
}

/// One validation issue with its position in the file.
pub struct LocatedIssue {
    /// The issue.
    pub issue: ConfigIssue,
    /// Where it is, when the file has the path.
    pub position: Option<Position>,
}

impl fmt::Display for LocatedIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "{} (at {}, {p})", self.issue.message, self.issue.path),
            None => write!(f, "{} (at {})", self.issue.message, self.issue.path),
        }
    }
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<LoadedConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path.to_path_buf(), text)
}

/// Reads and parses the configuration held by environment variable `name`
/// (how a container can be given it without a file). Messages name it
/// `$NAME`.
pub fn load_env(name: &str) -> Result<LoadedConfig, LoadError> {
    let path = PathBuf::from(format!("${name}"));
    let text = std::env::var(name).map_err(|e| LoadError::Read {
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, e),
    })?;
    parse(path, text)
}

fn parse(path: PathBuf, text: String) -> Result<LoadedConfig, LoadError> {
    let config = parse_yaml(&text).map_err(|e| LoadError::Parse {
        path: path.clone(),
        message: e.message,
    })?;
    Ok(LoadedConfig { path, text, config })
}

impl LoadedConfig {
    /// Every issue and warning of the configuration, located in the file,
    /// as the bundled runtime runs it: references resolve in this process's
    /// environment.
    pub fn report(&self) -> (Vec<LocatedIssue>, Vec<LocatedIssue>) {
        let environment: BTreeMap<String, String> = std::env::vars().collect();
        let report = draas_drasi::validate::validate(
            &self.config,
            &CheckTarget {
                instance_id: "default",
                environment: &environment,
                runtime: Runtime::Bundled,
            },
        );
        let located = |issues: Vec<ConfigIssue>| {
            issues
                .into_iter()
                .map(|issue| LocatedIssue {
                    position: locate(&self.text, &issue.path),
                    issue,
                })
                .collect()
        };
        (located(report.issues), located(report.warnings))
    }

    /// Every validation issue of the configuration, located in the file.
    pub fn issues(&self) -> Vec<LocatedIssue> {
        self.report().0
    }
}
