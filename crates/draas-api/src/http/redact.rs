//! Secrets stay out of responses. `serverConfiguration.environment` is
//! where users put credentials (plugin fields reference them as
//! `${NAME}`), so every response shows its values as [`REDACTED`]; the
//! store and the workers keep the real ones. Names stay visible, and a
//! value can still be replaced with a PATCH.

use draas_core::instance::{Instance, ServerConfiguration};
use draas_core::messages::Command;
use draas_core::ports::DeadLetter;

/// What a secret value looks like in a response.
pub const REDACTED: &str = "********";

/// The server configuration with its environment values hidden.
pub fn server_configuration(mut config: ServerConfiguration) -> ServerConfiguration {
    for value in config.environment.values_mut() {
        *value = REDACTED.to_string();
    }
    config
}

/// The instance with its environment values hidden.
pub fn instance(mut instance: Instance) -> Instance {
    instance.server_configuration = server_configuration(instance.server_configuration);
    instance
}

/// The dead letter with the environment of a start command hidden.
pub fn dead_letter(mut letter: DeadLetter) -> DeadLetter {
    if let Some(envelope) = &mut letter.command {
        if let Command::Start(spec) | Command::Restart(spec) = &mut envelope.command {
            spec.server_configuration = server_configuration(spec.server_configuration.clone());
        }
    }
    letter
}
