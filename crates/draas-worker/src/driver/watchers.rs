//! The tasks that watch one running server, each tied to its registration
//! (see `registry`): its exit (a crash is reported `Failed` at once), its
//! components, its platform's condition, and the health check that
//! confirms an adopted server.

use super::*;

impl<P: Platform> Inner<P> {
    /// Reports the server's exit the moment it happens, unless `start` or
    /// `stop` is the one waiting for it.
    pub(super) fn spawn_monitor(self: &Arc<Self>, id: &InstanceId, serial: u64, exit: ExitWatch) {
        let me = self.clone();
        let instance = id.clone();
        let task = async move {
            let exit = exit.wait().await;
            let Some(crashed) = me.servers.take_crashed(&instance, serial) else {
                return;
            };
            // Known before anyone hears of the crash (the restart may come
            // at once): see `exited_here`.
            let started_at = crashed.record.started_at;
            lock(&me.exited).insert(instance.clone(), started_at);
            // The registration is gone, and its owner (this watcher's task)
            // with it: the report is a task of its own.
            tokio::spawn(me.report_crash(instance, crashed, exit, started_at));
        };
        self.servers.spawn(id, serial, Task::Monitor, task);
    }

    /// Reports a crash the exit monitor took: `Failed` at once, then the
    /// record's `running: false`.
    async fn report_crash(
        self: Arc<Self>,
        instance: InstanceId,
        crashed: Snapshot<P::Record, P::Handle>,
        exit: Exit,
        started_at: DateTime<Utc>,
    ) {
        warn!(instance = %instance, "server {}", exit.description);
        let words = self
            .platform
            .last_words(&instance, &crashed.record.platform, false)
            .await;
        let message = if words.is_empty() {
            format!("the server {}", exit.description)
        } else {
            format!("the server {}: {words}", exit.description)
        };
        // The crash first, so the reconciler can answer it at once.
        self.sink
            .observe(
                Observation::now(instance.clone(), ActualState::Failed, Some(exit.reason()))
                    .message(message)
                    .runtime(RuntimeUpdate::Exited(exit.code)),
            )
            .await;
        // Then the record's `running: false`, a moment later: the
        // restart that usually answers a crash rewrites the record
        // anyway, and meanwhile this commit would only queue in front
        // of the restart's own in the store. It marks only the launch
        // that crashed, never a later one's record.
        tokio::time::sleep(MARK_EXITED_AFTER).await;
        if let Err(e) = self.records.mark_exited(&instance, started_at).await {
            warn!(instance = %instance, "{e}");
        }
        let mut exited = lock(&self.exited);
        if exited.get(&instance) == Some(&started_at) {
            exited.remove(&instance);
        }
    }

    /// Follows the server's component events, unless something already
    /// does for this registration (`again`: the server was restarted by its
    /// platform, and the earlier watch ended with it).
    pub(super) fn spawn_component_watch(
        self: &Arc<Self>,
        id: &InstanceId,
        serial: u64,
        record: &ServerRecord<P::Record>,
        again: bool,
        initial: ActualState,
    ) {
        if !again && self.servers.has_task(id, serial, Task::Components) {
            return;
        }
        let task = watch_components(
            self.api(record),
            id.clone(),
            record.generation,
            self.sink.clone(),
            initial,
        );
        self.servers.spawn(id, serial, Task::Components, task);
    }

    /// Checks an adopted (or re-asserted) server is healthy and records it
    /// as running here, which clears `Unknown` left by a dead worker.
    pub(super) fn spawn_confirm(self: &Arc<Self>, id: &InstanceId, serial: u64) {
        let me = self.clone();
        let instance = id.clone();
        let task = async move {
            // Stamped before looking: a stop recorded meanwhile is newer
            // and wins over this observation.
            let observed_at = Utc::now();
            let Some(current) = me.servers.get(&instance) else {
                return;
            };
            let api = me.api(&current.record);
            let deadline = Instant::now() + CONFIRM_WITHIN;
            let (state, reason, message) = loop {
                if api.healthy().await {
                    match api.readiness().await {
                        Some(Readiness::Ready) => {
                            break (ActualState::Running, Reason::Ready, None)
                        }
                        Some(Readiness::Failed(why)) => {
                            break (ActualState::Degraded, Reason::ComponentError, Some(why))
                        }
                        Some(Readiness::Bootstrapping(progress)) => {
                            break (ActualState::Starting, Reason::Bootstrapping, Some(progress))
                        }
                        _ => {}
                    }
                }
                if Instant::now() > deadline {
                    warn!(instance = %instance, "the server did not prove healthy; leaving its status as it is");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let still_running = me
                .servers
                .get(&instance)
                .is_some_and(|s| s.serial == serial && s.phase == Phase::Running);
            if !still_running {
                return;
            }
            let mut observation = Observation::now(instance, state, Some(reason))
                .generation(current.record.generation)
                .runtime(RuntimeUpdate::Set(me.runtime_info(&current.record)));
            observation.message = message;
            observation.observed_at = observed_at;
            me.sink.observe(observation).await;
        };
        self.servers.spawn(id, serial, Task::Confirm, task);
    }

    /// Reports every change of a running server's platform condition, for
    /// a platform that has them (see [`Condition`]).
    pub(super) fn spawn_condition_watch(
        self: &Arc<Self>,
        id: &InstanceId,
        serial: u64,
        handle: &P::Handle,
    ) {
        let Some(mut changes) = self.platform.condition(handle) else {
            return;
        };
        let me = self.clone();
        let instance = id.clone();
        let task = async move {
            // A registration is `Running` only once it was ready.
            let mut was_ready = true;
            while changes.changed().await.is_ok() {
                let current = changes.borrow_and_update().clone();
                let Some(server) = me.servers.get(&instance).filter(|s| s.serial == serial) else {
                    return;
                };
                if server.phase != Phase::Running {
                    // Starting: `await_ready` reads the condition itself.
                    // Stopping: nothing is news.
                    continue;
                }
                match current {
                    Condition::Ready => {
                        if !was_ready {
                            info!(instance = %instance, "the server is ready again");
                            me.spawn_component_watch(
                                &instance,
                                serial,
                                &server.record,
                                true,
                                ActualState::Running,
                            );
                            me.spawn_confirm(&instance, serial);
                        }
                        was_ready = true;
                    }
                    Condition::Waiting {
                        state,
                        reason,
                        message,
                    } => {
                        was_ready = false;
                        me.sink
                            .observe(
                                Observation::now(instance.clone(), state, reason).message(message),
                            )
                            .await;
                    }
                    Condition::Failing {
                        reason,
                        message,
                        exit_code,
                        crashed,
                    } => {
                        was_ready = false;
                        warn!(instance = %instance, "{message}");
                        let words = if crashed {
                            me.platform
                                .last_words(&instance, &server.record.platform, false)
                                .await
                        } else {
                            String::new()
                        };
                        let message = if words.is_empty() {
                            message
                        } else {
                            format!("{message}: {words}")
                        };
                        me.sink
                            .observe(
                                Observation::now(
                                    instance.clone(),
                                    ActualState::Failed,
                                    Some(reason),
                                )
                                .message(message)
                                .runtime(RuntimeUpdate::Restarted(exit_code)),
                            )
                            .await;
                    }
                }
            }
        };
        self.servers.spawn(id, serial, Task::Condition, task);
    }
}
