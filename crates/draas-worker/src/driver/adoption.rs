//! Servers this worker did not start: what a takeover found, servers of
//! dead workers adopted (platforms whose servers outlive their worker),
//! orphans removed, and the platform's periodic upkeep.

use super::*;
impl<P: Platform> Inner<P> {
    /// Reports what a takeover found: an adopted server is confirmed
    /// healthy, a vanished one is `Failed`.
    pub(super) async fn after_takeover(
        self: &Arc<Self>,
        id: &InstanceId,
        takeover: &Takeover<P::Record, (P::Handle, ExitWatch)>,
    ) -> bool {
        match takeover {
            Takeover::Adopted(..) => {
                if let Some(server) = self.servers.get(id) {
                    self.spawn_confirm(id, server.serial);
                }
                true
            }
            Takeover::Gone(record) => {
                warn!(instance = %id, "server gone while its worker was down");
                self.sink
                    .observe(
                        Observation::now(
                            id.clone(),
                            ActualState::Failed,
                            Some(Reason::LostWhileWorkerDown),
                        )
                        .message(format!(
                            "the server ({}) was gone when its worker restarted",
                            self.platform.handle_of(&record.platform)
                        ))
                        .runtime(RuntimeUpdate::Exited(None)),
                    )
                    .await;
                false
            }
            // Another live worker's server, a stopped one, or gone.
            Takeover::OwnedBy(_) | Takeover::Stopped(_) | Takeover::NoRecord => false,
        }
    }

    /// On a platform whose servers outlive a silent worker (Kubernetes),
    /// adopts now and then the running servers of workers that died, so
    /// that someone watches them (started once).
    pub(super) fn start_adoption(self: &Arc<Self>) {
        if self.platform.platform().policy().silent_worker != SilentWorker::LeavesInstancesAlone
            || self.adoption_started.swap(true, Ordering::SeqCst)
        {
            return;
        }
        self.every(
            ADOPT_EVERY,
            |inner| async move { inner.adopt_unwatched().await },
        );
    }

    /// Runs `work` every `every` (the first time after one period), for as
    /// long as the driver lives and is not detached.
    pub(super) fn every<F, Fut>(self: &Arc<Self>, every: Duration, work: F)
    where
        F: Fn(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.detached.load(Ordering::SeqCst) {
                    return;
                }
                work(inner).await;
            }
        });
    }

    /// Takes over the running servers of this scope whose owner is not
    /// this worker and is dead.
    pub(super) async fn adopt_unwatched(self: &Arc<Self>) {
        let Ok(records) = self.records.list().await else {
            return;
        };
        for (id, record) in records {
            if !record.running || record.owner == self.worker_id || self.servers.get(&id).is_some()
            {
                continue;
            }
            match self.take_over(&id).await {
                Ok(takeover) => {
                    if self.after_takeover(&id, &takeover).await {
                        info!(instance = %id, owner = %record.owner, "adopted the server of a dead worker");
                    }
                }
                Err(e) => warn!(instance = %id, "cannot take the server over: {e}"),
            }
        }
    }

    /// Removes the platform objects of instances that no longer exist (they
    /// were deleted while this worker was down, or by `?force=true`, or
    /// someone made them by hand with this installation's labels): what the
    /// platform finds labelled, and the servers recorded in this scope by
    /// this worker or by dead ones. Safe at any time: an instance's record
    /// is written before any of its objects, and removed after them.
    pub(super) async fn remove_orphans(&self) {
        let mut candidates: std::collections::BTreeSet<InstanceId> = self
            .platform
            .labelled_instances()
            .await
            .into_iter()
            .collect();
        if let Ok(records) = self.records.list().await {
            let live: Vec<String> = draas_core::workers::live_workers(
                self.store.as_ref(),
                Some(self.platform.platform()),
                Utc::now(),
            )
            .await
            .map(|workers| workers.into_iter().map(|w| w.worker_id).collect())
            .unwrap_or_default();
            candidates.extend(
                records
                    .into_iter()
                    .filter(|(_, r)| r.owner == self.worker_id || !live.contains(&r.owner))
                    .map(|(id, _)| id),
            );
        }
        for id in candidates {
            match self
                .store
                .get(draas_core::keys::INSTANCES, id.as_str())
                .await
            {
                Ok(Some(_)) => {}
                Ok(None) => {
                    info!(instance = %id, "removing what is left of an instance that no longer exists");
                    let record = self.records.get(&id).await.ok().flatten().map(|r| r.value);
                    if let Some(server) = self.servers.get(&id) {
                        // Unwatched first: its exit is no crash to report.
                        self.servers.remove(&id, server.serial);
                        let _ = self
                            .platform
                            .stop(&id, &server.handle, &server.exit, Duration::ZERO)
                            .await;
                    } else if let Some(record) = &record {
                        if let Some((handle, exit)) =
                            self.platform.attach(&id, &record.platform).await
                        {
                            let _ = self
                                .platform
                                .stop(&id, &handle, &exit, Duration::ZERO)
                                .await;
                        }
                    }
                    match self
                        .platform
                        .remove(&id, record.as_ref().map(|r| &r.platform))
                        .await
                    {
                        Ok(()) => {
                            let _ = self.records.remove(&id).await;
                        }
                        Err(e) => warn!(instance = %id, "cannot remove it: {e}"),
                    }
                }
                Err(e) => warn!(instance = %id, "cannot tell whether it still exists: {e}"),
            }
        }
    }

    /// Sweeps for orphans now and then, for as long as the driver lives
    /// (started once).
    pub(super) fn start_orphan_sweep(self: &Arc<Self>) {
        if self.sweep_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let every = self.orphan_sweep_every.max(Duration::from_secs(1));
        self.every(every, |inner| async move { inner.remove_orphans().await });
    }

    /// Runs the platform's upkeep now and then, for as long as the driver
    /// lives (started once).
    pub(super) fn start_upkeep(self: &Arc<Self>) {
        let Some(every) = self.platform.upkeep_every() else {
            return;
        };
        if self.upkeep_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let servers = inner
                    .servers
                    .in_phase(Phase::Running)
                    .into_iter()
                    .map(|(id, s)| (id, s.record.platform))
                    .collect();
                inner.platform.upkeep(servers).await;
            }
        });
    }
}
