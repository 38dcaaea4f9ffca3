//! What `warden config check` can find out before anything runs: programs that are not there
//! or not executable, containers that do not exist with no image to create them, images the
//! engine does not have. Warnings, not errors: the machine may change before the service is
//! first needed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;

use crate::config::{Config, ContainerSpec, ProcessSpec, ServiceKind};

/// Engine calls for a check are bounded by this each.
const ENGINE_WITHIN: Duration = Duration::from_secs(5);

/// One warning per problem found, naming the config key.
pub async fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for svc in &config.services {
        let key = format!("services.{}", svc.name);
        match &svc.kind {
            ServiceKind::Process(spec) => out.extend(check_program(&key, spec)),
            ServiceKind::Container(spec) => out.extend(check_container(&key, spec).await),
            ServiceKind::Remote(_) => {}
        }
    }
    out
}

fn executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where `program` would be found, the way the process driver runs it: a path with a slash is
/// relative to the service's cwd, a bare name is looked up on PATH (the service's own, if its
/// env sets one).
pub fn resolve_program(program: &str, spec: &ProcessSpec) -> Result<PathBuf, String> {
    let cwd = spec.cwd.clone().unwrap_or_else(|| PathBuf::from("."));
    if program.contains('/') {
        let path = cwd.join(program);
        return match path.exists() {
            false => Err(format!("program {} does not exist", path.display())),
            true if !executable(&path) => Err(format!("program {} is not executable", path.display())),
            true => Ok(path),
        };
    }
    let search = spec.env.get("PATH").cloned().or_else(|| std::env::var("PATH").ok()).unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| cwd.join(dir).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("program {program:?} is not on PATH ({search})"))
}

fn check_program(key: &str, spec: &ProcessSpec) -> Option<String> {
    let program = spec.command.first()?;
    resolve_program(program, spec).err().map(|e| format!("{key}.command: {e}"))
}

async fn check_container(key: &str, spec: &ContainerSpec) -> Vec<String> {
    let connect = tokio::time::timeout(ENGINE_WITHIN, super::container::connect(spec));
    let docker = match connect.await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return vec![format!("{key}: cannot check container {}: {e}", spec.container)],
        Err(_) => return vec![format!("{key}: cannot check container {}: the engine did not answer", spec.container)],
    };
    let inspect = docker.inspect_container(&spec.container, None::<InspectContainerOptions>);
    match tokio::time::timeout(ENGINE_WITHIN, inspect).await {
        Ok(Ok(_)) => Vec::new(),
        Ok(Err(e)) if super::container::is_not_found(&e) => match &spec.image {
            None => vec![format!(
                "{key}: container {} does not exist and no image is set to create it ({key}.image)",
                spec.container
            )],
            Some(image) => match tokio::time::timeout(ENGINE_WITHIN, docker.inspect_image(image)).await {
                Ok(Ok(_)) => Vec::new(),
                Ok(Err(e)) if super::container::is_not_found(&e) => {
                    vec![format!("{key}.image: the engine has no image {image} (warden does not pull from registries)")]
                }
                Ok(Err(e)) => vec![format!("{key}.image: cannot check image {image}: {e}")],
                Err(_) => vec![format!("{key}.image: cannot check image {image}: the engine did not answer")],
            },
        },
        Ok(Err(e)) => vec![format!("{key}: cannot check container {}: {e}", spec.container)],
        Err(_) => vec![format!("{key}: cannot check container {}: the engine did not answer", spec.container)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &str, env_path: Option<&str>) -> ProcessSpec {
        ProcessSpec {
            command: vec![command.to_string()],
            env: env_path.map(|p| ("PATH".to_string(), p.to_string())).into_iter().collect(),
            cwd: None,
            stop_command: None,
        }
    }

    #[test]
    fn finds_programs_as_the_driver_would() {
        assert!(resolve_program("sh", &spec("sh", None)).is_ok());
        assert!(resolve_program("/bin/sh", &spec("/bin/sh", None)).is_ok());
        let e = resolve_program("no-such-program-x", &spec("no-such-program-x", None)).unwrap_err();
        assert!(e.contains("is not on PATH"), "{e}");
        // The service's own PATH is the one searched.
        assert!(resolve_program("sh", &spec("sh", Some("/nonexistent"))).is_err());
        let plain = tempfile::NamedTempFile::new().unwrap();
        let path = plain.path().to_str().unwrap();
        let e = resolve_program(path, &spec(path, None)).unwrap_err();
        assert!(e.contains("is not executable"), "{e}");
    }
}
