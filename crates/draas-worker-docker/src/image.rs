//! Images: whether one is on the engine, and building the bundled runtime's
//! image from its static binary. Nothing is ever pulled (no registry is
//! assumed reachable); the image is built by the engine from a context
//! sent over the Engine API: `FROM scratch`, the binary, a CA bundle.

use std::path::Path;

use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;

/// The runtime image's Dockerfile (the same as `docker/runtime/Dockerfile`).
pub const RUNTIME_DOCKERFILE: &str = include_str!("../../../docker/runtime/Dockerfile");

/// Where the host keeps its CA bundle (copied into the image, for https
/// calls of reactions and TLS to postgres).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why an image could not be used or built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The engine failed.
    #[error("the Docker engine failed: {0}")]
    Engine(#[from] bollard::errors::Error),
    /// The build context could not be assembled.
    #[error("cannot read {path}: {source}")]
    Context {
        /// What could not be read.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The build failed.
    #[error("building {tag} failed: {message}")]
    Build {
        /// The tag.
        tag: String,
        /// The engine's message.
        message: String,
    },
}

/// Label of a runtime image naming the binary it was built from.
pub const RUNTIME_LABEL: &str = "draas.runtime";

/// What the engine knows of an image.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// Its working directory (`/` when it sets none).
    pub workdir: String,
    /// Its labels.
    pub labels: std::collections::HashMap<String, String>,
}

/// A fingerprint of the runtime binary (size and modification time): the
/// image built from it carries it, so a newer binary means a new image.
pub fn fingerprint(binary: &Path) -> Option<String> {
    let meta = std::fs::metadata(binary).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!("{}-{}", meta.len(), modified.as_nanos()))
}

/// The facts of `image`, or `None` when the engine does not have it.
pub async fn inspect(docker: &Docker, image: &str) -> Result<Option<ImageFacts>, ImageError> {
    match docker.inspect_image(image).await {
        Ok(inspected) => {
            let config = inspected.config.unwrap_or_default();
            let workdir = config
                .working_dir
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".to_string());
            Ok(Some(ImageFacts {
                workdir,
                labels: config.labels.unwrap_or_default(),
            }))
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Makes sure the runtime image `tag` is built from `binary` as it is now:
/// builds it when missing or built from another binary. Returns whether it
/// built.
pub async fn ensure_runtime_image(
    docker: &Docker,
    binary: &Path,
    tag: &str,
) -> Result<bool, ImageError> {
    let wanted = fingerprint(binary);
    let current = inspect(docker, tag).await?.is_some_and(|facts| {
        wanted.is_some() && facts.labels.get(RUNTIME_LABEL) == wanted.as_ref()
    });
    if current {
        return Ok(false);
    }
    build_runtime_image(docker, binary, tag).await?;
    Ok(true)
}

/// Builds the runtime image `tag` from the static `binary` (the bundled
/// `draas-runtime`). Returns the image id. The image the tag named before
/// is removed when no container uses it, so rebuilds leave nothing behind.
pub async fn build_runtime_image(
    docker: &Docker,
    binary: &Path,
    tag: &str,
) -> Result<String, ImageError> {
    let previous = docker.inspect_image(tag).await.ok().and_then(|i| i.id);
    let id = build(docker, binary, tag).await?;
    if let Some(previous) = previous.filter(|p| *p != id) {
        // In use by a container (or already gone): it stays, harmlessly.
        let _ = docker
            .remove_image(
                &previous,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
    }
    Ok(id)
}

async fn build(docker: &Docker, binary: &Path, tag: &str) -> Result<String, ImageError> {
    let context = {
        let binary = binary.to_path_buf();
        tokio::task::spawn_blocking(move || runtime_context(&binary))
            .await
            .map_err(|e| ImageError::Build {
                tag: tag.to_string(),
                message: e.to_string(),
            })??
    };
    let labels = std::collections::HashMap::from([(
        RUNTIME_LABEL.to_string(),
        fingerprint(binary).unwrap_or_default(),
    )]);
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .labels(&labels)
        .rm(true)
        .forcerm(true)
        .build();
    let mut output = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut id = None;
    while let Some(item) = output.next().await {
        match item {
            Ok(info) => {
                if let Some(found) = info.aux.and_then(|a| a.id) {
                    id = Some(found);
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(ImageError::Build {
                    tag: tag.to_string(),
                    message: error,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    id.ok_or_else(|| ImageError::Build {
        tag: tag.to_string(),
        message: "the engine reported no image id".into(),
    })
}

/// The build context: Dockerfile, binary, CA bundle (empty when the host
/// has none).
fn runtime_context(binary: &Path) -> Result<Vec<u8>, ImageError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ImageError::Context {
            path: path.display().to_string(),
            source,
        })
    };
    let runtime = read(binary)?;
    let ca = std::fs::read(CA_BUNDLE).unwrap_or_default();
    let mut archive = tar::Builder::new(Vec::new());
    let files: [(&str, &[u8], u32); 3] = [
        ("Dockerfile", RUNTIME_DOCKERFILE.as_bytes(), 0o644),
        ("draas-runtime", &runtime, 0o755),
        ("ca-certificates.crt", &ca, 0o644),
    ];
    let io = |source| ImageError::Context {
        path: "the build context".into(),
        source,
    };
    for (name, data, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        archive.append_data(&mut header, name, data).map_err(io)?;
    }
    archive.into_inner().map_err(io)
}
