//! # draas-bench
//!
//! Benchmarks of DRaaS, each against the bare operation it wraps, printed as
//! Markdown for BENCHMARKS.md. Run with `--release` builds:
//!
//! ```text
//! cargo run --release -p draas-bench -- runtime-startup
//! ```

mod bus_roundtrip;
mod control_plane;
mod docker;
mod healing;
mod kubernetes;
mod postgres_cdc;
mod runtime_startup;
mod stats;
mod store_cost;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "draas-bench", about = "DRaaS benchmarks (Markdown output)")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Bundled runtime: spawn to /health and to all queries Running, peak RSS.
    RuntimeStartup {
        /// The runtime binary (default: draas-runtime next to this binary).
        #[arg(long)]
        runtime: Option<PathBuf>,
        /// Runs per configuration.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Command round trip over the embedded and the Redis bus vs a raw
    /// Redis PING; commands/s with one and two workers (needs redis-server).
    Bus {
        /// Sequential commands for the latency figures.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Commands for the throughput figures.
        #[arg(long, default_value_t = 20_000)]
        commands: usize,
    },
    /// Control plane + Process platform: create→Running, crash detection,
    /// GET throughput, memory per instance record.
    ControlPlane {
        /// The draas binary (default: next to this binary).
        #[arg(long)]
        draas: Option<PathBuf>,
        /// The runtime binary (default: next to this binary).
        #[arg(long)]
        runtime: Option<PathBuf>,
        /// Create→Running runs.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Crashes to detect.
        #[arg(long, default_value_t = 60)]
        kills: usize,
        /// Instances stored during the GET benchmark.
        #[arg(long, default_value_t = 1000)]
        stored: usize,
        /// Instance records for the memory figure.
        #[arg(long, default_value_t = 10_000)]
        records: usize,
    },
    /// Docker platform: create→Running against a bare container (Engine API
    /// and `docker run`), crash → Failed, Docker's own restart policy (needs
    /// a Docker engine).
    Docker {
        /// The draas binary (default: next to this binary).
        #[arg(long)]
        draas: Option<PathBuf>,
        /// The runtime binary the image is built from (default: next to
        /// this binary).
        #[arg(long)]
        runtime: Option<PathBuf>,
        /// Create→Running runs.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Crashes to detect.
        #[arg(long, default_value_t = 30)]
        kills: usize,
        /// Restarts of Docker's policy to time (11 s apart).
        #[arg(long, default_value_t = 10)]
        restarts: usize,
    },
    /// Self-healing: kill -9 → /health again under DRaaS (Process, Docker),
    /// supervisord's autorestart and Docker's --restart on-failure, side by
    /// side; fleet convergence after a worker restart (needs a Docker
    /// engine, supervisord and redis-server).
    Healing {
        /// The draas binary (default: next to this binary).
        #[arg(long)]
        draas: Option<PathBuf>,
        /// The runtime binary (default: next to this binary).
        #[arg(long)]
        runtime: Option<PathBuf>,
        /// Kills per system (and runtime starts for the floor).
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Kills of the Docker restart-policy container (11 s apart).
        #[arg(long, default_value_t = 10)]
        docker_kills: usize,
        /// Instances of the convergence figure.
        #[arg(long, default_value_t = 100)]
        fleet: usize,
        /// Measure one part only: a platform (its floor and DRaaS on it,
        /// without the other systems) or the fleet's convergence (for quick
        /// comparisons; the published figures come from a full run).
        #[arg(long, value_enum)]
        only: Option<healing::Only>,
    },
    /// PostgreSQL CDC: INSERT → row in the query's results, under DRaaS and
    /// with the runtime started bare (needs Debian's postgresql).
    PostgresCdc {
        /// The draas binary (default: next to this binary).
        #[arg(long)]
        draas: Option<PathBuf>,
        /// The runtime binary (default: next to this binary).
        #[arg(long)]
        runtime: Option<PathBuf>,
        /// Inserts per path.
        #[arg(long, default_value_t = 100)]
        samples: usize,
    },
    /// State store cost of a start and a stop: round trips and bytes
    /// written, counted at the store port (in process, scripted driver).
    StoreCost {
        /// Start/stop rounds.
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Queries in the instance's configuration.
        #[arg(long, default_value_t = 10)]
        queries: usize,
    },
    /// Kubernetes platform: start→Running against a bare server-side apply
    /// of the same objects, and the API requests per operation (needs the
    /// test cluster and a Docker engine for the fake kubelet).
    Kubernetes {
        /// The draas binary (default: next to this binary).
        #[arg(long)]
        draas: Option<PathBuf>,
        /// The runtime binary the image is built from (default: next to
        /// this binary).
        #[arg(long)]
        runtime: Option<PathBuf>,
        /// The test cluster's kubeconfig (`k8s-test-cluster.sh start` prints
        /// it).
        #[arg(long, env = "DRAAS_TEST_KUBECONFIG")]
        kubeconfig: PathBuf,
        /// Runs of each measurement.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
}

/// `given`, or the sibling binary `name` of this one.
fn or_sibling(given: Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    given.map_or_else(|| sibling(name), Ok)
}

/// A sibling binary of this one in the target directory.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no parent directory"))?;
    Ok(dir.join(name))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::RuntimeStartup { runtime, runs } => {
            let runtime = or_sibling(runtime, "draas-runtime")?;
            runtime_startup::run(&runtime, runs).await
        }
        Bench::StoreCost { runs, queries } => store_cost::run(runs, queries).await,
        Bench::Bus { samples, commands } => bus_roundtrip::run(samples, commands).await,
        Bench::Healing {
            draas,
            runtime,
            kills,
            docker_kills,
            fleet,
            only,
        } => {
            let draas = or_sibling(draas, "draas")?;
            let runtime = or_sibling(runtime, "draas-runtime")?;
            healing::run(&draas, &runtime, kills, docker_kills, fleet, only).await
        }
        Bench::ControlPlane {
            draas,
            runtime,
            runs,
            kills,
            stored,
            records,
        } => {
            let draas = or_sibling(draas, "draas")?;
            let runtime = or_sibling(runtime, "draas-runtime")?;
            control_plane::run(&draas, &runtime, runs, kills, stored, records).await
        }
        Bench::Docker {
            draas,
            runtime,
            runs,
            kills,
            restarts,
        } => {
            let draas = or_sibling(draas, "draas")?;
            let runtime = or_sibling(runtime, "draas-runtime")?;
            docker::run(&draas, &runtime, runs, kills, restarts).await
        }
        Bench::PostgresCdc {
            draas,
            runtime,
            samples,
        } => {
            let draas = or_sibling(draas, "draas")?;
            let runtime = or_sibling(runtime, "draas-runtime")?;
            postgres_cdc::run(&draas, &runtime, samples).await
        }
        Bench::Kubernetes {
            draas,
            runtime,
            kubeconfig,
            runs,
        } => {
            let draas = or_sibling(draas, "draas")?;
            let runtime = or_sibling(runtime, "draas-runtime")?;
            kubernetes::run(&draas, &runtime, &kubeconfig, runs).await
        }
    }
}
