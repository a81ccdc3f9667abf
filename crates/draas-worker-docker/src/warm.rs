//! Warm containers: an instance's next container, started ahead of need.
//!
//! Creating and starting a container costs the engine 250–300 ms (the
//! writable layer, the namespaces, the published ports): thirty times the
//! runtime's own start, and most of a restart. So while an instance of the
//! bundled runtime's image runs, the driver prepares the container its
//! restart would create: the same definition, its ports published, started
//! with the runtime in standby (`draas-runtime --standby`), which waits for
//! one order on its stdin. The restart after a crash then only writes the
//! order (its arguments) to that stdin: no create, no start.
//!
//! - **For one start only**: a warm container is made for one start spec
//!   and one runtime image (the default image, whose runtime binary the
//!   driver knows by fingerprint). A launch of anything else is served cold
//!   and the warm one removed. Other images are never warmed: nothing says
//!   their entrypoint knows `--standby`.
//! - **Made after the launch**: [`MAKE_AFTER`] later (not to slow the start
//!   beside it), one at a time per driver (a fleet's warm-up does not load
//!   the engine at once).
//! - **Never outliving its worker as a running container**: its stdin is a
//!   stream this worker attached; when the worker ends the stream closes,
//!   the runtime reads the end of its stdin and exits. What is left (an
//!   exited container) goes with the instance's earlier containers at its
//!   next launch, or with the instance.
//! - **Not kept for nothing**: removed when its instance stops or is
//!   removed, and [`LINGER`] after its instance's server ended without a
//!   new launch (a crash the policy does not restart).
//! - **Told apart by its name**: it is named like the container it will be,
//!   plus [`STANDBY_SUFFIX`], and renamed when it takes over; the status
//!   daemon ignores what containers in standby do.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::models::ContainerCreateBody;
use draas_core::instance::InstanceId;
use draas_worker::driver::ExitWatch;
use futures::Stream;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// How long after a launch its warm container is made: the launched
/// server has started by then, and the engine is idle again.
pub const MAKE_AFTER: Duration = Duration::from_secs(1);

/// How long a warm container waits after its instance's server ended for
/// the launch that takes it.
pub const LINGER: Duration = Duration::from_secs(60);

/// How long the engine may take to pass an order on.
pub const ORDER_WAIT: Duration = Duration::from_secs(5);

/// The end of the name of a container in standby.
pub const STANDBY_SUFFIX: &str = "-standby";

/// Whether a container named `name` (with or without the engine's leading
/// `/`) is a warm container still in standby.
pub fn in_standby(name: &str) -> bool {
    name.ends_with(STANDBY_SUFFIX)
}

type Input = Pin<Box<dyn AsyncWrite + Send>>;
type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// How an instance's warm containers are made, for its launches of one
/// start spec. Holds the configuration (secrets included): its `Debug`
/// shows none of it.
pub struct Recipe {
    /// The [`key`] of what they are made for: the image, its runtime and
    /// the start spec (see [`WarmContainers::take`]).
    pub made_for: String,
    /// The instance's name (container names derive from it).
    pub instance_name: String,
    /// The container's definition, in standby.
    pub body: ContainerCreateBody,
    /// The configuration file to upload before it starts, when it is not
    /// in the environment.
    pub archive: Option<Vec<u8>>,
    /// The order that makes it the server.
    pub order: Vec<u8>,
    /// The server's API port in the container.
    pub api_port: u16,
}

impl Recipe {
    /// The recipe of the container `body` defines: the same container,
    /// started in standby; the order hands the runtime the arguments
    /// `body` gave it, and its working directory (`workdir`, which a
    /// runtime leaves while in standby).
    pub fn new(
        made_for: String,
        instance_name: String,
        mut body: ContainerCreateBody,
        archive: Option<Vec<u8>>,
        workdir: &str,
        api_port: u16,
    ) -> Self {
        let mut args = body.cmd.take().unwrap_or_default();
        args.extend(["--workdir".to_string(), workdir.to_string()]);
        let order = serde_json::json!({ "args": args }).to_string().into_bytes();
        body.cmd = Some(vec![STANDBY_FLAG.to_string()]);
        body.open_stdin = Some(true);
        body.stdin_once = Some(true);
        Self {
            made_for,
            instance_name,
            body,
            archive,
            order,
            api_port,
        }
    }
}

impl std::fmt::Debug for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recipe")
            .field("instance_name", &self.instance_name)
            .field("api_port", &self.api_port)
            .finish_non_exhaustive()
    }
}

/// The runtime's flag for standby.
pub const STANDBY_FLAG: &str = "--standby";

/// A started container in standby, waiting for its order.
pub struct Warm {
    /// Its full id.
    pub container: String,
    /// The name it takes when it takes over.
    pub name: String,
    /// How it was made.
    pub recipe: Arc<Recipe>,
    /// The published host port of the server's API port.
    pub port: u16,
    /// Its exit, watched since before it started.
    pub exit: ExitWatch,
    /// Its stdin.
    pub input: Input,
    /// The other half of the attached stream (kept open with it).
    pub output: Output,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm")
            .field("container", &self.container)
            .field("name", &self.name)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Warm {
    /// Writes the order: from now on it is the server. An engine that
    /// does not take it within [`ORDER_WAIT`] fails it.
    pub async fn go(&mut self) -> std::io::Result<()> {
        let written = async {
            self.input.write_all(&self.recipe.order).await?;
            self.input.flush().await
        };
        tokio::time::timeout(ORDER_WAIT, written)
            .await
            .map_err(|_| std::io::Error::other(format!("not taken within {ORDER_WAIT:?}")))?
    }
}

/// What [`WarmContainers::take`] found.
#[derive(Debug)]
pub enum Taken {
    /// No warm container.
    None,
    /// One made for something else, or that ended: to remove.
    Unfit(Warm),
    /// One made for this launch, running.
    Fit(Warm),
}

#[derive(Default)]
struct Slot {
    /// Changes at every launch, stop and removal of the instance: a warm
    /// container made under another epoch is not kept.
    epoch: u64,
    warm: Option<Warm>,
    /// The name of the warm container being made.
    making: Option<String>,
    /// The instance stopped or went while its warm container was being
    /// made: the slot goes when the making ends.
    gone: bool,
}

#[derive(Default)]
struct Slots {
    by_instance: HashMap<InstanceId, Slot>,
    /// The last epoch handed out. Epochs only grow, across instances and
    /// slots: a task of an overtaken launch never matches a later one, even
    /// of a slot made anew.
    last_epoch: u64,
}

impl Slots {
    fn next_epoch(&mut self) -> u64 {
        self.last_epoch += 1;
        self.last_epoch
    }
}

/// The warm containers of one driver, one at most per instance.
#[derive(Default, Clone)]
pub struct WarmContainers {
    slots: Arc<Mutex<Slots>>,
    /// One warm container is made at a time.
    pub making: Arc<tokio::sync::Mutex<()>>,
    /// Told when a making ends.
    made: Arc<tokio::sync::Notify>,
}

impl WarmContainers {
    fn with<T>(&self, f: impl FnOnce(&mut Slots) -> T) -> T {
        let mut slots = match self.slots.lock() {
            Ok(slots) => slots,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut slots)
    }

    /// A launch of `id` for `made_for`: takes its warm container, and
    /// starts a new epoch (what is being made for the last one is not
    /// kept). Returns the new epoch too.
    pub fn take(&self, id: &InstanceId, made_for: &str) -> (Taken, u64) {
        self.with(|slots| {
            let epoch = slots.next_epoch();
            let slot = slots.by_instance.entry(id.clone()).or_default();
            slot.epoch = epoch;
            slot.gone = false;
            let taken = match slot.warm.take() {
                None => Taken::None,
                Some(warm) if warm.recipe.made_for == made_for && !warm.exit.has_exited() => {
                    Taken::Fit(warm)
                }
                Some(warm) => Taken::Unfit(warm),
            };
            (taken, epoch)
        })
    }

    /// The instance stops or goes: its warm container, to remove; nothing
    /// being made for it is kept.
    pub fn discard(&self, id: &InstanceId) -> Option<Warm> {
        self.with(|slots| {
            let epoch = slots.next_epoch();
            let slot = slots.by_instance.get_mut(id)?;
            slot.epoch = epoch;
            let warm = slot.warm.take();
            if slot.making.is_none() {
                slots.by_instance.remove(id);
            } else {
                slot.gone = true;
            }
            warm
        })
    }

    /// Waits until no warm container is being made for `id`.
    pub async fn until_made(&self, id: &InstanceId) {
        loop {
            // Created before the check: a making that ends after the check
            // still wakes it.
            let ended = self.made.notified();
            if self.with(|slots| {
                slots
                    .by_instance
                    .get(id)
                    .is_none_or(|slot| slot.making.is_none())
            }) {
                return;
            }
            ended.await;
        }
    }

    /// The instance's server ended `epoch` ago and no launch came: its warm
    /// container, to remove, when the epoch is still the same.
    pub fn expire(&self, id: &InstanceId, epoch: u64) -> Option<Warm> {
        self.with(|slots| {
            let slot = slots.by_instance.get_mut(id)?;
            (slot.epoch == epoch).then(|| slot.warm.take()).flatten()
        })
    }

    /// Whether a warm container named `name` may be made for `id` in
    /// `epoch` (no launch, stop or removal since); if so, it is marked as
    /// being made.
    pub fn begin(&self, id: &InstanceId, epoch: u64, name: &str) -> bool {
        self.with(|slots| match slots.by_instance.get_mut(id) {
            Some(slot) if slot.epoch == epoch && slot.warm.is_none() && slot.making.is_none() => {
                slot.making = Some(name.to_string());
                true
            }
            _ => false,
        })
    }

    /// The making of `id`'s warm container ended (`None`: it failed):
    /// kept when its epoch is still current, else handed back to remove.
    pub fn finish(&self, id: &InstanceId, epoch: u64, made: Option<Warm>) -> Option<Warm> {
        let unkept = self.with(|slots| {
            let Some(slot) = slots.by_instance.get_mut(id) else {
                return made;
            };
            slot.making = None;
            if slot.epoch != epoch {
                if slot.gone {
                    slots.by_instance.remove(id);
                }
                return made;
            }
            slot.warm = made;
            None
        });
        self.made.notify_waiters();
        unkept
    }

    /// The names (without the engine's `/`) of `id`'s warm containers,
    /// made or being made: not earlier containers to remove.
    pub fn names(&self, id: &InstanceId) -> Vec<String> {
        self.with(|slots| {
            slots
                .by_instance
                .get(id)
                .map(|slot| {
                    slot.warm
                        .iter()
                        .map(|w| standby_name(&w.name))
                        .chain(slot.making.clone())
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Every instance's warm container, to remove (the driver goes).
    pub fn drain(&self) -> Vec<Warm> {
        self.with(|slots| {
            let epoch = slots.next_epoch();
            slots
                .by_instance
                .values_mut()
                .filter_map(|slot| {
                    slot.epoch = epoch;
                    slot.warm.take()
                })
                .collect()
        })
    }
}

/// The key of what a warm container is made for (its image, runtime and
/// start spec, `made_for`): 32 hex digits of its SHA-256. It is put on the
/// server's container as a label, so that a worker adopting the server
/// can make its warm container without the start spec.
pub fn key(made_for: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(made_for.as_bytes())[..16])
}

/// The name of the warm container that takes over as `name`.
pub fn standby_name(name: &str) -> String {
    format!("{name}{STANDBY_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use draas_worker::driver::exit_channel;

    fn warm(made_for: &str) -> (Warm, draas_worker::driver::ExitNotifier) {
        let (notifier, exit) = exit_channel();
        let warm = Warm {
            container: "c1".into(),
            name: "draas-a-12345678-abcdef".into(),
            recipe: Arc::new(Recipe::new(
                made_for.into(),
                "a".into(),
                ContainerCreateBody::default(),
                None,
                "/",
                8080,
            )),
            port: 1,
            exit,
            input: Box::pin(tokio::io::sink()),
            output: Box::pin(futures::stream::empty()),
        };
        (warm, notifier)
    }

    fn id() -> InstanceId {
        "11111111-2222-3333-4444-555555555555".parse().unwrap()
    }

    #[test]
    fn the_recipe_starts_the_same_container_in_standby_and_orders_what_it_would_have_run() {
        let body = ContainerCreateBody {
            cmd: Some(vec!["--config-env".into(), "DRAAS_RUNTIME_CONFIG".into()]),
            image: Some("draas-runtime:latest".into()),
            ..Default::default()
        };
        let recipe = Recipe::new("x".into(), "a".into(), body, None, "/app", 8080);
        assert_eq!(recipe.body.cmd, Some(vec!["--standby".to_string()]));
        assert_eq!(recipe.body.image.as_deref(), Some("draas-runtime:latest"));
        assert_eq!(recipe.body.open_stdin, Some(true));
        assert_eq!(recipe.body.stdin_once, Some(true));
        let order: serde_json::Value = serde_json::from_slice(&recipe.order).unwrap();
        assert_eq!(
            order,
            serde_json::json!({"args": ["--config-env", "DRAAS_RUNTIME_CONFIG", "--workdir", "/app"]})
        );
    }

    #[test]
    fn a_warm_container_serves_only_the_launch_it_was_made_for_while_it_runs() {
        let slots = WarmContainers::default();
        let (taken, epoch) = slots.take(&id(), "spec-1");
        assert!(matches!(taken, Taken::None));
        assert!(slots.begin(&id(), epoch, "draas-a-12345678-abcdef-standby"));
        assert!(!slots.begin(&id(), epoch, "another"), "one at a time");
        assert_eq!(slots.names(&id()), vec!["draas-a-12345678-abcdef-standby"]);
        let (made, _notifier) = warm("spec-1");
        assert!(slots.finish(&id(), epoch, Some(made)).is_none(), "kept");
        assert_eq!(slots.names(&id()), vec!["draas-a-12345678-abcdef-standby"]);

        // Another generation: unfit, handed back to remove.
        assert!(matches!(slots.take(&id(), "spec-2").0, Taken::Unfit(_)));

        let (taken, epoch) = slots.take(&id(), "spec-1");
        assert!(matches!(taken, Taken::None));
        assert!(slots.begin(&id(), epoch, "n"));
        let (made, notifier) = warm("spec-1");
        assert!(slots.finish(&id(), epoch, Some(made)).is_none());
        notifier.exited(draas_worker::driver::Exit::code(0));
        assert!(
            matches!(slots.take(&id(), "spec-1").0, Taken::Unfit(_)),
            "it ended: unfit"
        );

        let (_, epoch) = slots.take(&id(), "spec-1");
        assert!(slots.begin(&id(), epoch, "n"));
        let (made, _notifier) = warm("spec-1");
        slots.finish(&id(), epoch, Some(made));
        assert!(matches!(slots.take(&id(), "spec-1").0, Taken::Fit(_)));
    }

    #[test]
    fn what_is_made_for_a_launch_overtaken_by_a_stop_or_another_launch_is_not_kept() {
        let slots = WarmContainers::default();
        let (_, epoch) = slots.take(&id(), "spec-1");
        assert!(slots.begin(&id(), epoch, "n"));
        assert!(slots.discard(&id()).is_none(), "nothing made yet");
        let (made, _n) = warm("spec-1");
        assert!(
            slots.finish(&id(), epoch, Some(made)).is_some(),
            "stopped meanwhile: handed back"
        );
        assert!(slots.names(&id()).is_empty());

        // Overtaken by a launch: handed back, and the launch's own making
        // may begin.
        let (_, epoch) = slots.take(&id(), "spec-1");
        assert!(slots.begin(&id(), epoch, "n"));
        let (_, later) = slots.take(&id(), "spec-1");
        let (made, _n) = warm("spec-1");
        assert!(slots.finish(&id(), epoch, Some(made)).is_some());
        assert!(slots.begin(&id(), later, "m"), "the later launch's making");
        let (made, _n2) = warm("spec-1");
        assert!(slots.finish(&id(), later, Some(made)).is_none());

        // A stop, then a start: the first launch's task, whose server
        // ended, never takes the new launch's warm container.
        let (_, old) = slots.take(&id(), "spec-2");
        assert!(slots.discard(&id()).is_none());
        let (_, new) = slots.take(&id(), "spec-2");
        assert!(slots.begin(&id(), new, "n"));
        let (made, _n3) = warm("spec-2");
        assert!(slots.finish(&id(), new, Some(made)).is_none());
        assert!(slots.expire(&id(), old).is_none(), "another epoch");
        assert_eq!(slots.names(&id()), vec!["draas-a-12345678-abcdef-standby"]);

        let (_, epoch) = slots.take(&id(), "spec-1");
        assert!(!slots.begin(&id(), epoch + 1, "n"), "a stale epoch");
        assert!(slots.begin(&id(), epoch, "n"));
        let (made, _n) = warm("spec-1");
        slots.finish(&id(), epoch, Some(made));
        assert!(slots.expire(&id(), epoch + 1).is_none(), "a launch came");
        assert!(slots.expire(&id(), epoch).is_some(), "none came");
        assert!(slots.drain().is_empty());
    }

    #[tokio::test]
    async fn a_removal_waits_for_its_instances_making_only() {
        let slots = WarmContainers::default();
        let other: InstanceId = "11111111-2222-3333-4444-666666666666".parse().unwrap();
        let (_, epoch) = slots.take(&id(), "spec-1");
        assert!(slots.begin(&id(), epoch, "n"));
        let (_, other_epoch) = slots.take(&other, "spec-1");
        assert!(slots.begin(&other, other_epoch, "o"));
        // Another instance's making does not hold it up.
        tokio::time::timeout(
            Duration::from_secs(1),
            slots.until_made(&InstanceId::generate()),
        )
        .await
        .expect("nothing being made for it");
        assert!(slots.discard(&id()).is_none());
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.until_made(&id()).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "its own making holds it up");
        let (made, _n) = warm("spec-1");
        assert!(
            slots.finish(&id(), epoch, Some(made)).is_some(),
            "handed back"
        );
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the making ended")
            .unwrap();
        assert!(slots.names(&id()).is_empty(), "the slot went with it");
    }
}
