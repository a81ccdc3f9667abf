//! Which servers this worker owns: taking one over from a dead worker of
//! its scope (compare-and-set on its record), knowing a crash it saw before
//! its record says so, and what the API and the status say of a server.

use super::*;

impl<P: Platform> Inner<P> {
    /// Makes sure this worker manages the server of `id` if one runs in its
    /// scope (taking it over from a dead worker), and returns the record of
    /// the instance, if any.
    pub(super) async fn ensure_managed(
        self: &Arc<Self>,
        id: &InstanceId,
    ) -> Result<Option<ServerRecord<P::Record>>, DriverError> {
        if let Some(current) = self.servers.get(id) {
            return Ok(Some(current.record));
        }
        if let Some(record) = self.exited_here(id).await {
            return Ok(Some(record));
        }
        match self.take_over(id).await? {
            Takeover::NoRecord => Ok(None),
            Takeover::OwnedBy(owner) => Err(DriverError::new(
                ErrorCode::InvalidState,
                format!("the server is run by worker {owner}, which is alive"),
            )),
            Takeover::Stopped(record) | Takeover::Gone(record) => Ok(Some(record)),
            Takeover::Adopted(record, ..) => Ok(Some(record)),
        }
    }

    /// The record of `id`, marked stopped, when it is of a launch this
    /// worker saw crash and has not marked yet: nothing to take over or
    /// attach to (and no write on the way to the restart).
    pub(super) async fn exited_here(&self, id: &InstanceId) -> Option<ServerRecord<P::Record>> {
        let started_at = *lock(&self.exited).get(id)?;
        let mut record = self.records.get(id).await.ok()??.value;
        if record.owner != self.worker_id || record.started_at != started_at {
            return None;
        }
        record.running = false;
        Some(record)
    }

    /// Takes over the server of `id` (see [`Records::take_over`]); an
    /// adopted server is registered and watched.
    pub(super) async fn take_over(
        self: &Arc<Self>,
        id: &InstanceId,
    ) -> Result<Takeover<P::Record, (P::Handle, ExitWatch)>, DriverError> {
        let platform = &self.platform;
        let takeover = self
            .records
            .take_over(
                id,
                |record| async move { platform.attach(id, &record).await },
            )
            .await?;
        if let Takeover::Adopted(record, (handle, exit)) = &takeover {
            let serial = self.servers.insert(
                id,
                record.clone(),
                handle.clone(),
                exit.clone(),
                Phase::Running,
            );
            self.spawn_monitor(id, serial, exit.clone());
            self.spawn_condition_watch(id, serial, handle);
            // Whether it is ready is what the confirmation finds out.
            self.spawn_component_watch(id, serial, record, false, ActualState::Starting);
            info!(instance = %id, "adopted a running server");
        }
        Ok(takeover)
    }

    /// The API of the server `record` names.
    pub(super) fn api(&self, record: &ServerRecord<P::Record>) -> ServerApi {
        self.platform.server_api(&record.platform, &record.address)
    }

    pub(super) fn runtime_info(&self, record: &ServerRecord<P::Record>) -> RuntimeInfo {
        RuntimeInfo {
            worker_id: self.worker_id.clone(),
            scope: self.scope.clone(),
            handle: Some(self.platform.handle_of(&record.platform)),
            host: record.address.host.clone(),
            port: record.address.port,
            endpoint: record.address.endpoint.clone(),
            started_at: Some(record.started_at),
            last_exit_code: None,
        }
    }
}
