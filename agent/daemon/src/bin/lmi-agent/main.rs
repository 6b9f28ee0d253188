//! The lmi-agent daemon.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lmi_agent::invoke_api::{InvokeApi, InvokeApiHandle};
use lmi_agent::server;
use lmi_agent::watchdog;
use lmi_agent_core::agent::{Agent, HostServices};
use lmi_agent_core::capacity::HostCapacity;
use lmi_agent_core::catalog::Catalog;
use lmi_agent_core::config::{
    layers::{Layers, Loaded},
    Config, LogFormat, DEFAULT_CONFIG_PATH,
};
use lmi_agent_core::launch::ProcessSpawner;
use lmi_agent_core::logs::LogPipeline;
use lmi_cgroup as cgroup;
use lmi_sandbox::Sandbox;
use tokio::signal::unix::{signal, SignalKind};

mod demo;
mod fault;

/// How long a stopping agent waits for the function log writer to write what is queued.
const LOG_FLUSH_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "lmi-agent",
    version,
    about = "Per-host node agent for Lambda Managed Instances style execution environments",
    after_help = "Configuration: defaults < the TOML file < LMI_AGENT_<SECTION>_<KEY> environment variables < flags. \
                  Every key is listed in docs/configuration.md; `lmi-agent check-config` prints the effective one."
)]
struct Cli {
    /// Configuration file (default /etc/lmi-agent/agent.toml; an absent default file means built-in defaults).
    #[arg(long, env = "LMI_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Overrides `socket`.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Overrides `state_dir`.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Overrides `shims_dir`.
    #[arg(long, global = true)]
    shims_dir: Option<PathBuf>,
    /// Overrides `cgroup_parent`.
    #[arg(long, global = true)]
    cgroup_parent: Option<String>,
    /// Overrides `log_format` (json or text).
    #[arg(long, global = true, value_parser = ["json", "text"])]
    log_format: Option<String>,
    /// Sets any configuration key, e.g. `--set capacity.vcpus=8` (repeatable; applied last).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration (file, environment, flags) and print the effective configuration as TOML.
    CheckConfig,
    /// Start an agent on a built-in default, run an example Python function through it, print what happened
    /// and clean up (needs root: it creates cgroups).
    Demo,
}

/// Merges the configuration layers: defaults, the file, `LMI_AGENT_*` variables, then flags.
fn load_config(cli: &Cli) -> anyhow::Result<Loaded> {
    let mut layers = Layers::new();
    match &cli.config {
        Some(p) => {
            layers.file(p)?;
        }
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            layers.file(Path::new(DEFAULT_CONFIG_PATH))?;
        }
        None => {}
    }
    layers.env(std::env::vars_os())?;
    let path_flag = |p: &Option<PathBuf>, flag: &str| -> anyhow::Result<Option<String>> {
        p.as_ref()
            .map(|p| {
                p.to_str()
                    .map(str::to_owned)
                    .with_context(|| format!("{flag}: the path is not valid UTF-8"))
            })
            .transpose()
    };
    let flags = [
        ("--socket", "socket", path_flag(&cli.socket, "--socket")?),
        (
            "--state-dir",
            "state_dir",
            path_flag(&cli.state_dir, "--state-dir")?,
        ),
        (
            "--shims-dir",
            "shims_dir",
            path_flag(&cli.shims_dir, "--shims-dir")?,
        ),
        (
            "--cgroup-parent",
            "cgroup_parent",
            cli.cgroup_parent.clone(),
        ),
        ("--log-format", "log_format", cli.log_format.clone()),
    ];
    for (flag, key, value) in flags {
        if let Some(v) = value {
            layers.set(key, &v, flag)?;
        }
    }
    for assignment in &cli.set {
        let (key, value) = assignment
            .split_once('=')
            .with_context(|| format!("--set {assignment:?}: expected KEY=VALUE"))?;
        layers.set(key.trim(), value, &format!("--set {}", key.trim()))?;
    }
    Ok(layers.resolve()?)
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LMI_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a file, a pipe or the journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> anyhow::Result<()> {
    // Re-executed as an environment's PID namespace init: that, and nothing else.
    lmi_sandbox::pidns::run_init_if_asked();
    let cli = Cli::parse();
    let loaded = load_config(&cli)?;
    let config = loaded.config.clone();
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            print!("{}", loaded.render()?);
            Ok(())
        }
        Command::Demo => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(demo::run(cli.shims_dir.clone())),
        Command::Run => {
            init_logs(config.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run(config))
        }
    }
}

/// A started agent: control API listening, ready for environments.
pub(crate) struct Daemon {
    agent: Arc<Agent>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), server::ServeError>>,
    socket: PathBuf,
    /// Sampler, scaler reporter, metrics listener: stopped at shutdown.
    background: Vec<tokio::task::JoinHandle<()>>,
    invoke_api: Option<InvokeApiHandle>,
}

impl Daemon {
    /// Binds the listeners, sets up cgroups, the catalog and capacity, the log pipeline and the sandbox, and
    /// starts serving. When a step fails, every earlier one is undone ([`StartUndo`]): a failed start leaves
    /// no cgroup, nftables table, mount, socket or file of its own behind.
    pub(crate) async fn start(config: &Config) -> anyhow::Result<Self> {
        let mut undo = StartUndo::new(config);
        match Self::start_steps(config, &mut undo).await {
            Ok(daemon) => Ok(daemon),
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "start-up failed: undoing what it set up"
                );
                undo.run().await;
                Err(e)
            }
        }
    }

    async fn start_steps(config: &Config, undo: &mut StartUndo) -> anyhow::Result<Self> {
        // Runtimes read their shims inside their own mount namespace: refuse a directory they cannot see
        // there (every environment would otherwise fail at its first import).
        if let Some(hidden) =
            lmi_sandbox::mounts::hidden_from_runtimes(&config.shims_dir, &config.state_dir)
        {
            anyhow::bail!(
                "shims_dir {} is under {}, which runtimes cannot see in their sandbox (it is covered in their \
                 mount namespace or private to the agent): choose a directory outside it, such as \
                 /usr/share/lmi-agent/runtime-shims",
                config.shims_dir.display(),
                hidden.display()
            );
        }
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
        // The listeners first: a socket path or a port that cannot be bound fails the start before anything
        // is set up on the host. Bound before READY: a client told the agent is up can connect.
        let unix = server::bind_socket(&config.socket)?;
        undo.socket = Some(config.socket.clone());
        let tcp = server::bind_tcp(config).await?;
        let invoke_listener = match config.invoke_api.listen {
            Some(addr) => Some(
                InvokeApi::bind(addr)
                    .await
                    .with_context(|| format!("invoke_api.listen: binding {addr}"))?,
            ),
            None => None,
        };
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                lmi_agent::metrics::bind(addr)
                    .await
                    .with_context(|| format!("metrics_listen: binding {addr}"))?,
            ),
            None => None,
        };
        let catalog = Catalog::load_with_shims(config.catalog.as_deref(), Some(&config.shims_dir))?;
        let cgroups = cgroup::detect(&config.cgroup_parent).context("setting up cgroups")?;
        undo.cgroups = Some(cgroups.clone());
        for (entry, availability) in catalog.iter() {
            tracing::info!(runtime = %entry.id, availability = ?availability, "runtime");
        }
        let (vcpus, memory_mib) = HostCapacity::detect_totals();
        let capacity = HostCapacity::new(
            if config.capacity.vcpus > 0 {
                config.capacity.vcpus
            } else {
                vcpus
            },
            if config.capacity.memory_mib > 0 {
                config.capacity.memory_mib
            } else {
                memory_mib
            },
            config.capacity.reserved_vcpus,
            config.capacity.reserved_memory_mib,
        );
        let logs = Arc::new(
            LogPipeline::start(&config.logs, &config.state_dir)
                .context("starting the function log pipeline")?,
        );
        undo.logs = Some(logs.clone());
        let sandbox = {
            let (c, dir, name) = (
                config.sandbox.clone(),
                config.state_dir.clone(),
                config.cgroup_parent.clone(),
            );
            Arc::new(
                tokio::task::spawn_blocking(move || Sandbox::start(&c, &dir, &name))
                    .await
                    .context("setting up the sandbox")?
                    .context(
                        "setting up the sandbox (hosts without network namespaces, ip or nft can run with \
                         sandbox.network_isolation = false)",
                    )?,
            )
        };
        undo.sandbox = Some(sandbox.clone());
        let state = lmi_agent_core::state::StateStore::open(&config.state_dir)?;
        // Unpacks a previous life stopped in the middle of.
        let code_root = config.state_dir.join("code");
        if let Err(e) = lmi_agent_core::code::remove_stale_unpacks(&code_root) {
            tracing::warn!(dir = %code_root.display(), error = %e, "removing partial unpacks failed");
        }
        tracing::info!(
            socket = %config.socket.display(),
            cgroup_version = %cgroups.version(),
            cgroup_parent = %cgroups.parent_path(),
            network_isolation = sandbox.network_isolation(),
            vcpus_allocatable = capacity.vcpus_allocatable,
            memory_mib_allocatable = capacity.memory_mib_allocatable,
            "lmi-agent started"
        );
        let agent = Agent::new(
            config.clone(),
            catalog,
            capacity,
            HostServices {
                cgroups,
                spawner: Arc::new(ProcessSpawner),
                state,
                logs,
                sandbox,
            },
        );
        // From here the agent's own shutdown undoes the cgroups and the sandbox.
        undo.agent = Some(agent.clone());
        // Before taking requests: stop whatever a previous life of the agent left running.
        let recovery = agent.recover().await;
        if !recovery.lost.is_empty() || !recovery.orphan_cgroups.is_empty() {
            tracing::warn!(
                lost = ?recovery.lost,
                orphan_cgroups = ?recovery.orphan_cgroups,
                "reconciled leftovers of a previous agent life"
            );
        }
        // The last step that can fail; nothing after it can.
        let invoke_api = invoke_listener
            .map(|l| InvokeApi::start(agent.clone(), &config.invoke_api, l))
            .transpose()
            .context("starting the invoke API")?;
        let mut background = vec![tokio::spawn(agent.clone().run_sampler())];
        if config.scaler.endpoint.is_some() {
            background.push(tokio::spawn(lmi_agent::scaler::run(
                agent.clone(),
                config.scaler.clone(),
            )));
        }
        if let Some(listener) = metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "metrics on /metrics");
            }
            background.push(tokio::spawn(lmi_agent::metrics::serve(
                agent.clone(),
                listener,
            )));
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn({
            let agent = agent.clone();
            async move { server::serve(agent, unix, tcp, stop_rx).await }
        });
        undo.disarm();
        Ok(Self {
            agent,
            stop_tx,
            server,
            socket: config.socket.clone(),
            background,
            invoke_api,
        })
    }

    /// Drains every environment (in-flight invokes get `grace`), removes all cgroups, stops the listeners.
    pub(crate) async fn shutdown(mut self, grace: Duration) -> anyhow::Result<()> {
        // No new invokes over HTTP; those in flight finish (or fail) as the environments drain.
        if let Some(api) = &self.invoke_api {
            api.begin_stop();
        }
        self.agent.shutdown(grace).await;
        for task in &self.background {
            task.abort();
        }
        self.agent.logs().shutdown(LOG_FLUSH_WAIT).await;
        if let Some(api) = self.invoke_api.take() {
            api.join().await;
        }
        let _ = self.stop_tx.send(true);
        let result = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        let _ = std::fs::remove_file(&self.socket);
        match result {
            Ok(Ok(r)) => r.map_err(Into::into),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Ok(()),
        }
    }
}

/// What a start set up so far, undone in reverse order when a later step fails. The state directory is left
/// as the start found it: entries it did not hold are removed, mounts made under it are detached, and
/// directories the start created (the state directory, the socket's) are removed.
#[derive(Default)]
struct StartUndo {
    armed: bool,
    state_dir: PathBuf,
    /// The state directory's entries before the start (`None`: it did not exist).
    state_before: StateBefore,
    mounts_before: Vec<PathBuf>,
    /// Directories that did not exist before the start (deepest first), removed if empty.
    missing_dirs: Vec<PathBuf>,
    socket: Option<PathBuf>,
    cgroups: Option<Arc<dyn cgroup::CgroupDriver>>,
    logs: Option<Arc<LogPipeline>>,
    sandbox: Option<Arc<Sandbox>>,
    agent: Option<Arc<Agent>>,
}

/// What the state directory held before the start.
#[derive(Default)]
enum StateBefore {
    /// It did not exist: it is removed whole.
    Missing,
    /// These entries: others are removed.
    Entries(std::collections::HashSet<std::ffi::OsString>),
    /// Unreadable: it is left alone.
    #[default]
    Unknown,
}

/// `dir` and its ancestors that do not exist, deepest first.
fn missing_ancestors(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_owned)
        .collect()
}

impl StartUndo {
    fn new(config: &Config) -> Self {
        let state_dir = config.state_dir.clone();
        let state_before = match std::fs::read_dir(&state_dir) {
            Ok(rd) => {
                StateBefore::Entries(rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateBefore::Missing,
            Err(_) => StateBefore::Unknown,
        };
        let mut missing_dirs = missing_ancestors(&state_dir);
        if let Some(parent) = config.socket.parent() {
            missing_dirs.extend(missing_ancestors(parent));
        }
        missing_dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        missing_dirs.dedup();
        Self {
            armed: true,
            mounts_before: mounts_under(&state_dir),
            state_dir,
            state_before,
            missing_dirs,
            ..Self::default()
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    async fn run(mut self) {
        if !self.armed {
            return;
        }
        if let Some(agent) = self.agent.take() {
            // Stops what recovery may have found, removes the sandbox's host part and the parent cgroup.
            agent.shutdown(Duration::ZERO).await;
            self.sandbox = None;
            self.cgroups = None;
        }
        if let Some(sandbox) = self.sandbox.take() {
            let _ = tokio::task::spawn_blocking(move || sandbox.shutdown()).await;
        }
        if let Some(logs) = self.logs.take() {
            logs.shutdown(Duration::from_secs(1)).await;
        }
        if let Some(cgroups) = self.cgroups.take() {
            if let Err(e) = cgroups.remove_parent() {
                tracing::warn!(error = %e, "removing the agent's parent cgroup failed");
            }
        }
        if let Some(socket) = self.socket.take() {
            let _ = std::fs::remove_file(socket);
        }
        // Mounts this start made under the state directory (deepest first), then what it created there.
        let mut made: Vec<PathBuf> = mounts_under(&self.state_dir)
            .into_iter()
            .filter(|m| !self.mounts_before.contains(m))
            .collect();
        made.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in made {
            if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(mount = %m.display(), error = %e, "detaching a mount of the failed start failed");
            }
        }
        let removed = match &self.state_before {
            StateBefore::Unknown => Ok(()),
            StateBefore::Missing => std::fs::remove_dir_all(&self.state_dir),
            StateBefore::Entries(before) => std::fs::read_dir(&self.state_dir).and_then(|rd| {
                for e in rd.flatten() {
                    if before.contains(&e.file_name()) {
                        continue;
                    }
                    let p = e.path();
                    if e.file_type()?.is_dir() {
                        std::fs::remove_dir_all(&p)?;
                    } else {
                        std::fs::remove_file(&p)?;
                    }
                }
                Ok(())
            }),
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %self.state_dir.display(), error = %e,
                "removing what the failed start wrote in state_dir failed"),
        }
        for d in &self.missing_dirs {
            // Only when empty: never what something else put there since.
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Mount points at or under `dir`, from `/proc/self/mountinfo`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir))
        .collect()
}

async fn run(config: Config) -> anyhow::Result<()> {
    let watchdog_period = watchdog::ping_period_from_env()?;
    let fault = fault::Fault::from_env()?;
    let mut daemon = Daemon::start(&config).await?;
    lmi_agent::notify::notify_or_log("READY=1");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut fault_signal = match fault {
        Some(_) => Some(signal(SignalKind::user_defined2())?),
        None => None,
    };
    // The watchdog pings come from this loop, after a probe of the runtime and the registry lock answered: a
    // wedged agent stops pinging and systemd restarts it.
    let mut ticker = watchdog_period.map(|p| {
        tracing::info!(period_ms = p.as_millis() as u64, "systemd watchdog on");
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut liveness = watchdog::Liveness::new();
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: draining");
                break;
            }
            r = &mut daemon.server => {
                // The listeners died on their own: stop everything, report why.
                daemon.agent.shutdown(Duration::ZERO).await;
                return match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(e.into()),
                };
            }
            Some(period) = next_tick(&mut ticker) => {
                let agent = daemon.agent.clone();
                let probe = move || {
                    let _ = agent.environment_count();
                };
                if liveness.check(probe, period).await {
                    lmi_agent::notify::notify_or_log("WATCHDOG=1");
                }
            }
            Some(()) = next_signal(&mut fault_signal) => {
                if let Some(f) = fault {
                    f.inject(&daemon.agent);
                }
            }
        }
    }
    lmi_agent::notify::notify_or_log("STOPPING=1");
    let grace = Duration::from_secs(u64::from(config.environments.delete_grace_seconds));
    daemon.shutdown(grace).await?;
    tracing::info!("lmi-agent stopped");
    Ok(())
}

/// The next watchdog tick (with the period), or never when the watchdog is off.
async fn next_tick(ticker: &mut Option<tokio::time::Interval>) -> Option<Duration> {
    match ticker {
        Some(t) => {
            t.tick().await;
            Some(t.period())
        }
        None => std::future::pending().await,
    }
}

/// The next delivery of an optional signal, or never.
async fn next_signal(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
