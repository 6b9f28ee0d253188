//! Turning a spec into a runtime process tree: the command from the catalog, the Lambda environment
//! variables, and a spawn that places the child in its cgroup and its sandbox before `exec` (no window
//! outside either), in a process group of its own and, as PID 2 under a reaping init, in a PID namespace
//! of its own ([`lmi_sandbox::pidns`]).

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
};

use crate::spec::ValidSpec;
use lmi_cgroup::Placement;
use lmi_sandbox::{confine::Confinement, mounts::CgroupView, pidns};

/// Why a runtime could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("spec.code: runtime {runtime} needs an executable {path}")]
    MissingBootstrap { runtime: String, path: PathBuf },
    #[error("spec.runtime: runtime {0} has an empty command")]
    EmptyCommand(String),
}

/// Everything needed to start one runtime. Its `Debug` shows variable names only (values may be secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
}

impl std::fmt::Debug for LaunchPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchPlan")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &crate::spec::RedactedVariables(&self.env))
            .field("cwd", &self.cwd)
            .finish()
    }
}

/// Host facts the plan depends on.
#[derive(Debug, Clone)]
pub struct LaunchContext<'a> {
    pub env_id: &'a str,
    /// The function's code on the host (checked here).
    pub code_dir: &'a Path,
    /// The function's code as the runtime sees it (`LAMBDA_TASK_ROOT`, `{code}` in the catalog).
    pub task_root: &'a Path,
    pub shims_dir: &'a Path,
    pub runtime_api: SocketAddr,
    pub region: &'a str,
    /// `PATH` given to runtimes.
    pub path: &'a str,
    /// The environment's temporary directory as the runtime sees it (`TMPDIR`).
    pub tmp_dir: &'a Path,
    /// The environment's log socket, given as `_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET`.
    pub log_socket: Option<&'a Path>,
}

/// Builds the command line and environment of a runtime.
pub fn plan(spec: &ValidSpec, ctx: &LaunchContext<'_>) -> Result<LaunchPlan, LaunchError> {
    let substitute = |s: &str| {
        s.replace("{shims}", &ctx.shims_dir.display().to_string())
            .replace("{code}", &ctx.task_root.display().to_string())
            .replace("{handler}", &spec.handler)
    };
    let mut command = spec.runtime.command.iter().map(|s| substitute(s));
    let program = PathBuf::from(
        command
            .next()
            .ok_or_else(|| LaunchError::EmptyCommand(spec.runtime.id.clone()))?,
    );
    // The runtime sees the code at `task_root`; check the same file where the host has it.
    let on_host = program
        .strip_prefix(ctx.task_root)
        .map_or_else(|_| program.clone(), |rel| ctx.code_dir.join(rel));
    if spec.runtime.is_provided() && !is_executable(&on_host) {
        return Err(LaunchError::MissingBootstrap {
            runtime: spec.runtime.id.clone(),
            path: on_host,
        });
    }
    let args = command.collect();

    // Customer variables first: the agent's own names are set after them and always win (validation
    // already refuses reserved names; this keeps the guarantee even if that list and this one drift).
    let mut env: BTreeMap<String, String> = spec.environment.clone();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_owned(), v);
    };
    let date = log_stream_date();
    set("AWS_LAMBDA_RUNTIME_API", ctx.runtime_api.to_string());
    set("_HANDLER", spec.handler.clone());
    set("LAMBDA_TASK_ROOT", ctx.task_root.display().to_string());
    set("LAMBDA_RUNTIME_DIR", ctx.shims_dir.display().to_string());
    set("AWS_LAMBDA_FUNCTION_NAME", spec.function_name.clone());
    set("AWS_LAMBDA_FUNCTION_VERSION", spec.version.clone());
    set(
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        spec.memory_mib.to_string(),
    );
    set(
        "AWS_LAMBDA_LOG_GROUP_NAME",
        format!("/aws/lambda/{}", spec.function_name),
    );
    set(
        "AWS_LAMBDA_LOG_STREAM_NAME",
        format!("{date}/[{}]{}", spec.version, ctx.env_id),
    );
    set("AWS_REGION", ctx.region.to_owned());
    set("AWS_DEFAULT_REGION", ctx.region.to_owned());
    if let Some(e) = &spec.runtime.execution_env {
        set("AWS_EXECUTION_ENV", e.clone());
    }
    set(
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "lambda-managed-instances".to_owned(),
    );
    set(
        "AWS_LAMBDA_MAX_CONCURRENCY",
        spec.max_concurrency.to_string(),
    );
    set("AWS_LAMBDA_LOG_FORMAT", "JSON".to_owned());
    set("AWS_LAMBDA_LOG_LEVEL", "INFO".to_owned());
    set("TZ", ":UTC".to_owned());
    set("LANG", "en_US.UTF-8".to_owned());
    set("PATH", ctx.path.to_owned());
    set("TMPDIR", ctx.tmp_dir.display().to_string());
    if let Some(socket) = ctx.log_socket {
        set(
            "_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET",
            socket.display().to_string(),
        );
    }
    set(
        "LD_LIBRARY_PATH",
        format!("{}/lib", ctx.task_root.display()),
    );
    Ok(LaunchPlan {
        program,
        args,
        env,
        cwd: ctx.task_root.to_owned(),
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `YYYY/MM/DD` of today (UTC), as Lambda starts log stream names.
fn log_stream_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (y, m, d) = crate::civil_time::civil_from_days(days);
    format!("{y:04}/{m:02}/{d:02}")
}

/// Starts processes. A trait so that lifecycle logic can be exercised without creating processes.
pub trait Spawner: Send + Sync + std::fmt::Debug {
    /// Starts the plan's program inside the cgroups of `placement` and the sandbox of `confinement` (which
    /// also sets its working directory), in a new process group and a new PID namespace, with piped
    /// stdout/stderr and no stdin. The child returned is the runtime's main process itself.
    fn spawn(
        &self,
        plan: &LaunchPlan,
        placement: Placement,
        confinement: Confinement,
    ) -> io::Result<tokio::process::Child>;
}

/// Spawns real processes. The binary using it must call [`pidns::run_init_if_asked`] first thing in its
/// `main`: it is re-executed as each PID namespace's init.
#[derive(Debug, Default)]
pub struct ProcessSpawner;

impl Spawner for ProcessSpawner {
    fn spawn(
        &self,
        plan: &LaunchPlan,
        placement: Placement,
        mut confinement: Confinement,
    ) -> io::Result<tokio::process::Child> {
        let dirs: Vec<PathBuf> = placement
            .paths()
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        if let Some(view) = CgroupView::new(&dirs).map_err(io::Error::other)? {
            confinement.show_cgroups(view);
        }
        let mut cmd = tokio::process::Command::new(&plan.program);
        // No `current_dir`: std changes directory before `pre_exec`, where `plan.cwd` (inside the runtime's
        // mount namespace) does not exist yet; the confinement moves there itself.
        cmd.args(&plan.args)
            .env_clear()
            .envs(&plan.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        // The agent runs with a negative oom_score_adj (the unit's OOMScoreAdjust) so the kernel spares it; a
        // runtime must not inherit that protection (nor any other adjustment of the agent's), so it is reset
        // to 0 in the child. Raising it needs no privilege.
        let reset_oom_score = own_oom_score_adj() != 0;
        // SAFETY: the closure runs in the child between fork and exec. It only makes system calls: setpgid(2),
        // write(2) (`Placement::enter`), open(2)/write(2)/close(2) on a static path (the OOM score), then setns,
        // unshare, mount, umount2, open_tree, move_mount, mkdir, symlink, close, chdir, prctl, setgroups,
        // setres[ug]id, capset and seccomp (`Confinement::enter`, the seccomp filter installed last, compiled
        // by the agent at start) on values prepared before fork; no locks, no heap.
        // The cgroup is joined and the OOM score reset first, while the child is still root (and before
        // `Confinement::enter` roots its cgroup namespace there).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                placement.enter()?;
                if reset_oom_score {
                    let fd = libc::open(
                        c"/proc/self/oom_score_adj".as_ptr(),
                        libc::O_WRONLY | libc::O_CLOEXEC,
                    );
                    if fd >= 0 {
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                }
                confinement.enter()
            });
        }
        pidns::spawn_in_new_namespace(cmd)
    }
}

/// This process's `oom_score_adj` (0 when it cannot be read).
fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::spec;
    use lmi_proto::v1 as pb;

    fn spec_for(runtime: &str, dir: &Path) -> ValidSpec {
        let catalog = Catalog::load(None).unwrap();
        let mut env = std::collections::HashMap::new();
        env.insert("GREETING".to_owned(), "hi".to_owned());
        let s = pb::EnvironmentSpec {
            function: Some(pb::FunctionRef {
                name: "f".into(),
                version: "7".into(),
                arn: String::new(),
            }),
            runtime: runtime.into(),
            handler: "app.handler".into(),
            code: Some(pb::Code {
                source: Some(pb::code::Source::Directory(dir.display().to_string())),
                sha256: String::new(),
            }),
            memory_mib: 4096,
            max_concurrency: 12,
            environment: env,
            ..Default::default()
        };
        crate::wire::spec::validate(
            &s,
            &catalog,
            &spec::SpecDefaults {
                region: "eu-west-1".into(),
                account_id: "000000000000".into(),
            },
        )
        .unwrap()
    }

    fn ctx<'a>(dir: &'a Path) -> LaunchContext<'a> {
        LaunchContext {
            env_id: "env-1",
            code_dir: dir,
            task_root: Path::new("/var/task"),
            shims_dir: Path::new("/opt/shims"),
            runtime_api: "127.0.0.1:9001".parse().unwrap(),
            region: "eu-west-1",
            path: "/usr/bin:/bin",
            tmp_dir: Path::new("/tmp"),
            log_socket: Some(Path::new("/run/lmi/log.sock")),
        }
    }

    #[test]
    fn lambda_environment_is_complete() {
        let t = tempfile::tempdir().unwrap();
        let p = plan(&spec_for("python3.11", t.path()), &ctx(t.path())).unwrap();
        assert_eq!(p.args, vec!["/opt/shims/python/bootstrap.py".to_owned()]);
        let e = |k: &str| p.env.get(k).cloned().unwrap_or_default();
        assert_eq!(e("AWS_LAMBDA_RUNTIME_API"), "127.0.0.1:9001");
        assert_eq!(e("_HANDLER"), "app.handler");
        assert_eq!(e("LAMBDA_TASK_ROOT"), "/var/task");
        assert_eq!(e("TMPDIR"), "/tmp");
        assert_eq!(e("LD_LIBRARY_PATH"), "/var/task/lib");
        assert_eq!(e("AWS_LAMBDA_FUNCTION_NAME"), "f");
        assert_eq!(e("AWS_LAMBDA_FUNCTION_VERSION"), "7");
        assert_eq!(e("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), "4096");
        assert_eq!(e("AWS_LAMBDA_MAX_CONCURRENCY"), "12");
        assert_eq!(
            e("AWS_LAMBDA_INITIALIZATION_TYPE"),
            "lambda-managed-instances"
        );
        assert_eq!(e("AWS_EXECUTION_ENV"), "AWS_Lambda_python3.11");
        assert_eq!(e("AWS_LAMBDA_LOG_FORMAT"), "JSON");
        assert_eq!(e("AWS_REGION"), "eu-west-1");
        assert_eq!(e("AWS_LAMBDA_LOG_GROUP_NAME"), "/aws/lambda/f");
        assert!(e("AWS_LAMBDA_LOG_STREAM_NAME").ends_with("/[7]env-1"));
        assert_eq!(e("TZ"), ":UTC");
        assert_eq!(e("GREETING"), "hi");
        assert_eq!(
            e("_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET"),
            "/run/lmi/log.sock"
        );
        assert_eq!(p.cwd, Path::new("/var/task"));
    }

    #[test]
    fn provided_runs_the_functions_bootstrap_or_says_it_is_missing() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let spec = spec_for("provided.al2023", t.path());
        let e = plan(&spec, &ctx(t.path())).unwrap_err().to_string();
        assert!(
            e.starts_with("spec.code: runtime provided.al2023 needs an executable"),
            "{e}"
        );
        assert!(!p_has_exec_env(&spec));
        let boot = t.path().join("bootstrap");
        std::fs::write(&boot, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&boot, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = plan(&spec, &ctx(t.path())).unwrap();
        assert_eq!(p.program, Path::new("/var/task/bootstrap"));
        assert!(!p.env.contains_key("AWS_EXECUTION_ENV"));
    }

    fn p_has_exec_env(spec: &ValidSpec) -> bool {
        spec.runtime.execution_env.is_some()
    }

    #[test]
    fn debug_output_never_shows_variable_values() {
        let t = tempfile::tempdir().unwrap();
        let mut spec = spec_for("python3.11", t.path());
        spec.environment
            .insert("DB_PASSWORD".into(), "hunter2-secret".into());
        let p = plan(&spec, &ctx(t.path())).unwrap();
        for text in [format!("{p:?}"), format!("{spec:?}"), format!("{p:#?}")] {
            assert!(text.contains("DB_PASSWORD"), "{text}");
            assert!(!text.contains("hunter2-secret"), "{text}");
            assert!(!text.contains("\"hi\""), "{text}");
        }
    }
}
