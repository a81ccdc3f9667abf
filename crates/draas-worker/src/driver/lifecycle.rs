//! Starting and stopping one server: launch, readiness (health, then every
//! component), a failed start's cleanup, stop and the live view.

use super::*;

impl<P: Platform> Inner<P> {
    pub(super) async fn launch(
        self: &Arc<Self>,
        id: &InstanceId,
        spec: &StartSpec,
    ) -> Result<Started, DriverError> {
        let launched = self.platform.launch(id, spec).await?;
        let record = ServerRecord {
            version: draas_core::records::RECORD_VERSION,
            owner: self.worker_id.clone(),
            generation: spec.generation,
            address: launched.address,
            started_at: Utc::now(),
            running: true,
            platform: launched.record,
        };
        let serial = self.servers.insert(
            id,
            record.clone(),
            launched.handle.clone(),
            launched.exit.clone(),
            Phase::Starting,
        );
        if let Err(e) = self.records.save(id, &record).await {
            // A server nobody could find again after a restart must not run.
            self.platform.kill(id, &launched.handle).await;
            self.servers.remove(id, serial);
            return Err(e.with_state(ActualState::Failed, Reason::PlatformError));
        }
        self.spawn_monitor(id, serial, launched.exit);
        self.spawn_condition_watch(id, serial, &launched.handle);
        info!(instance = %id, generation = spec.generation, "launched");
        let deadline = Instant::now()
            + Duration::from_secs(u64::from(spec.server_configuration.start_timeout_seconds));
        let mut started = self.await_ready(id, serial, deadline).await?;
        if started.state == ActualState::Running && started.message.is_none() {
            started.message = self.platform.note(id, spec);
        }
        Ok(started)
    }

    /// Waits for readiness of registration `serial` of `id`.
    pub(super) async fn await_ready(
        self: &Arc<Self>,
        id: &InstanceId,
        serial: u64,
        deadline: Instant,
    ) -> Result<Started, DriverError> {
        let Some(server) = self.servers.get(id).filter(|s| s.serial == serial) else {
            return Err(DriverError::new(
                ErrorCode::InvalidState,
                "the server was replaced or stopped while starting",
            ));
        };
        let api = self.api(&server.record);
        let mut condition = self.platform.condition(&server.handle);
        let mut healthy = false;
        let mut bootstrapping: Option<String> = None;
        let mut waiting_for: Option<String> = None;
        let mut polls = 0u32;
        // Err: the error, and whether the server must be killed first.
        let outcome = loop {
            if let Some(exit) = server.exit.current() {
                let words = self
                    .platform
                    .last_words(id, &server.record.platform, true)
                    .await;
                let (code, reason) = classify_startup_failure(&words);
                break Err((
                    DriverError::new(
                        code,
                        format!(
                            "the server {} before it was ready: {words}",
                            exit.description
                        ),
                    )
                    .with_state(ActualState::Failed, reason),
                    false,
                ));
            }
            match condition.as_ref().map(|c| c.borrow().clone()) {
                Some(failing @ Condition::Failing { .. }) => {
                    break Err((self.failed_start(id, &server.record, failing).await, true));
                }
                Some(Condition::Ready) => healthy = true,
                Some(Condition::Waiting { message, .. }) => {
                    healthy = false;
                    waiting_for = Some(message);
                }
                // No platform condition: `/health` says when startup ended.
                None => healthy = healthy || api.healthy().await,
            }
            if healthy {
                match api.readiness().await {
                    Some(Readiness::Ready) => break Ok((ActualState::Running, None)),
                    Some(Readiness::Failed(why)) => break Ok((ActualState::Degraded, Some(why))),
                    Some(Readiness::Bootstrapping(progress)) => bootstrapping = Some(progress),
                    Some(Readiness::Starting) | None => bootstrapping = None,
                }
            }
            let now = Instant::now();
            if now >= deadline {
                if let (true, Some(progress)) = (healthy, bootstrapping.take()) {
                    // Up, and loading its sources: a long bootstrap is no
                    // failed start. The component watch says when it is done.
                    break Ok((ActualState::Starting, Some(progress)));
                }
                let what = match (&waiting_for, healthy) {
                    (_, true) => "its components did not all start".to_string(),
                    (Some(waiting), false) => waiting.clone(),
                    (None, false) => "/health did not answer".to_string(),
                };
                break Err((
                    DriverError::new(
                        ErrorCode::StartTimeout,
                        format!("the server was not ready in time: {what}; it was killed"),
                    )
                    .with_state(ActualState::Failed, Reason::StartTimeout),
                    true,
                ));
            }
            match condition.as_mut() {
                // The platform says when something changes: wait for that
                // (bounded, to notice the exit and the deadline).
                Some(changes) if !healthy => {
                    let bound = Duration::from_millis(250).min(deadline - now);
                    if let Ok(Err(_)) = tokio::time::timeout(bound, changes.changed()).await {
                        // The platform stopped following the server; its
                        // exit watch says what became of it.
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
                _ => {
                    // Servers usually start in milliseconds: look often at
                    // first (a refused connection costs microseconds), then
                    // every 25 ms.
                    let pause = if polls < 200 && condition.is_none() {
                        1
                    } else {
                        25
                    };
                    polls += 1;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        };
        match outcome {
            Ok((state, message)) => {
                if server.phase != Phase::Running
                    && !self.servers.set_phase(id, serial, Phase::Running)
                {
                    return Err(DriverError::new(
                        ErrorCode::InvalidState,
                        "the server was stopped while starting",
                    ));
                }
                self.spawn_component_watch(id, serial, &server.record, false, state);
                // The server may have exited (or started failing) between
                // the last look and the phase change, when the monitor
                // would not report it.
                if server.exit.has_exited() {
                    let words = self
                        .platform
                        .last_words(id, &server.record.platform, true)
                        .await;
                    self.forget(id, serial).await;
                    return Err(DriverError::new(
                        ErrorCode::PlatformError,
                        format!("the server exited right after starting: {words}"),
                    )
                    .with_state(ActualState::Failed, Reason::ExitedWithCode));
                }
                if let Some(failing @ Condition::Failing { .. }) =
                    condition.as_ref().map(|c| c.borrow().clone())
                {
                    let e = self.failed_start(id, &server.record, failing).await;
                    self.kill_and_forget(id, &server).await;
                    return Err(e);
                }
                Ok(Started {
                    runtime: self.runtime_info(&server.record),
                    state,
                    message,
                })
            }
            Err((e, kill)) => {
                if kill {
                    self.kill_and_forget(id, &server).await;
                } else {
                    self.forget(id, serial).await;
                }
                Err(e)
            }
        }
    }

    /// Kills registration `server` of `id`, waits (bounded) for it to be
    /// gone, and forgets it.
    pub(super) async fn kill_and_forget(
        &self,
        id: &InstanceId,
        server: &Snapshot<P::Record, P::Handle>,
    ) {
        self.platform.kill(id, &server.handle).await;
        let _ = tokio::time::timeout(KILL_WAIT, server.exit.wait()).await;
        self.forget(id, server.serial).await;
    }

    /// The error of a start the platform says is failing (`failing` is a
    /// [`Condition::Failing`]): a server that crashed is judged by its last
    /// words, as one that exited (a rejected configuration is
    /// `ConfigRejected`, whatever the platform calls the crash).
    pub(super) async fn failed_start(
        &self,
        id: &InstanceId,
        record: &ServerRecord<P::Record>,
        failing: Condition,
    ) -> DriverError {
        let Condition::Failing {
            reason,
            message,
            crashed,
            ..
        } = failing
        else {
            return DriverError::new(ErrorCode::PlatformError, "the server failed to start")
                .with_state(ActualState::Failed, Reason::PlatformError);
        };
        if !crashed {
            let code = match reason {
                Reason::ImagePullBackOff | Reason::ErrImageNeverPull | Reason::ImageMissing => {
                    ErrorCode::ImageMissing
                }
                _ => ErrorCode::PlatformError,
            };
            return DriverError::new(code, format!("the server could not start: {message}"))
                .with_state(ActualState::Failed, reason);
        }
        let words = self.platform.last_words(id, &record.platform, true).await;
        let (code, classified) = classify_startup_failure(&words);
        let reason = if classified == Reason::ExitedWithCode {
            reason
        } else {
            classified
        };
        let detail = if words.is_empty() {
            message
        } else {
            format!("{message}: {words}")
        };
        DriverError::new(
            code,
            format!("the server failed before it was ready: {detail}"),
        )
        .with_state(ActualState::Failed, reason)
    }

    /// Drops registration `serial` of `id` and marks its record stopped.
    pub(super) async fn forget(&self, id: &InstanceId, serial: u64) {
        if self.servers.remove(id, serial).is_some() {
            if let Err(e) = self.records.mark_stopped(id).await {
                warn!(instance = %id, "{e}");
            }
        }
    }

    /// Stops the server of `id` if this worker runs one.
    pub(super) async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), DriverError> {
        let Some((before, server)) = self.servers.begin_stop(id) else {
            // Not running here: make sure no record says it runs.
            return self.records.mark_stopped(id).await;
        };
        if let Err(e) = self
            .platform
            .stop(id, &server.handle, &server.exit, grace)
            .await
        {
            // Still running: an exit from now on is the monitor's again.
            self.servers.set_phase(id, server.serial, before);
            return Err(e);
        }
        info!(instance = %id, "stopped");
        self.forget(id, server.serial).await;
        Ok(())
    }

    /// The live view of registration `server`.
    pub(super) async fn live(&self, server: &Snapshot<P::Record, P::Handle>) -> LiveStatus {
        let api = self.api(&server.record);
        let (healthy, data_plane) = futures::join!(api.healthy(), api.data_plane());
        LiveStatus {
            running: true,
            handle: Some(self.platform.handle_of(&server.record.platform)),
            generation: Some(server.record.generation),
            endpoint: Some(server.record.address.endpoint.clone()),
            healthy: Some(healthy),
            components: data_plane.as_ref().map(|d| d.components_by_kind()),
            data_plane,
        }
    }
}
