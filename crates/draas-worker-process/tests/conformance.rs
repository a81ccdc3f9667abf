//! The driver conformance suite against the Process platform: real runtime
//! processes of the bundled runtime, real signals, real files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use draas_core::instance::{InstanceId, PlatformHandle, PlatformType};
use draas_core::keys;
use draas_core::messages::StartSpec;
use draas_core::ports::store::{JsonStore, Precondition};
use draas_core::ports::{PlatformDriver, StateStore};
use draas_testkit::conformance::driver::{DriverFixture, Impostor};
use draas_worker::WorkerContext;
use draas_worker_process::record::start_time_of;
use draas_worker_process::ProcessSettings;

struct Processes {
    root: PathBuf,
    host: String,
    runtime: PathBuf,
}

struct Sleeper(std::process::Child);

impl Impostor for Sleeper {
    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pid_of(handle: &PlatformHandle) -> (u32, u64) {
    match handle {
        PlatformHandle::Process { pid, start_time } => (*pid, *start_time),
        other => panic!("not a process handle: {other:?}"),
    }
}

#[async_trait]
impl DriverFixture for Processes {
    fn platform(&self) -> PlatformType {
        PlatformType::Process
    }

    async fn driver(&self, context: &WorkerContext) -> Arc<dyn PlatformDriver> {
        let settings =
            ProcessSettings::new(self.root.clone(), self.runtime.clone(), self.host.clone());
        Arc::new(draas_worker_process::driver(settings, context))
    }

    fn start_spec(&self, id: &InstanceId, generation: u64) -> StartSpec {
        let configuration = draas_testkit::counter_configuration(draas_testkit::free_port());
        draas_testkit::start_spec(id, &configuration, PlatformType::Process, generation)
    }

    async fn crash(&self, handle: &PlatformHandle) {
        let (pid, _) = pid_of(handle);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9");
    }

    async fn is_running(&self, handle: &PlatformHandle) -> bool {
        let (pid, start_time) = pid_of(handle);
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
        start_time_of(pid) == Some(start_time) && !zombie
    }

    async fn leftovers(&self, id: &InstanceId) -> Vec<String> {
        let files = [
            self.root.join("instances").join(id.as_str()),
            self.root.join("configs").join(format!("{id}-config.yaml")),
        ];
        files
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect()
    }

    async fn impersonate(&self, store: &dyn StateStore, id: &InstanceId) -> Box<dyn Impostor> {
        let sleeper = std::process::Command::new("sleep")
            .arg("120")
            .spawn()
            .expect("sleep");
        let records = keys::worker_records(PlatformType::Process, &self.host);
        let mut record = store
            .get_json::<serde_json::Value>(&records, id.as_str())
            .await
            .expect("read")
            .expect("a record of the server")
            .value;
        record["platform"]["pid"] = serde_json::json!(sleeper.id());
        store
            .put_json(&records, id.as_str(), &record, Precondition::None)
            .await
            .expect("write");
        Box::new(Sleeper(sleeper))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_driver_passes_the_driver_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = draas_testkit::process::Reaper(dir.path().to_path_buf());
    let fixture = Processes {
        root: dir.path().join("process"),
        host: format!("conformance-{}", uuid::Uuid::new_v4().simple()),
        runtime: draas_testkit::workspace_binary("draas-runtime"),
    };
    let store: Arc<dyn StateStore> = Arc::new(draas_store::EmbeddedStore::in_memory().unwrap());
    let bus = Arc::new(draas_bus::InProcessBus::new());
    draas_testkit::conformance::driver::run_all(&fixture, store, bus).await;
}
