//! The lmi-agent daemon.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lmi_agent::{
    agent::Agent,
    capacity::HostCapacity,
    catalog::Catalog,
    cgroup,
    config::{Config, LogFormat, DEFAULT_CONFIG_PATH},
    launch::ProcessSpawner,
    sandbox::Sandbox,
    server,
};
use tokio::signal::unix::{signal, SignalKind};

mod demo;

#[derive(Debug, Parser)]
#[command(
    name = "lmi-agent",
    version,
    about = "Per-host node agent for Lambda Managed Instances style execution environments"
)]
struct Cli {
    /// Configuration file (absent default file = built-in defaults).
    #[arg(long, env = "LMI_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Overrides `socket`.
    #[arg(long, env = "LMI_AGENT_SOCKET", global = true)]
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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration and print the effective configuration as TOML.
    CheckConfig,
    /// Start an agent on a built-in default, run an example Python function through it, print what happened
    /// and clean up (needs root: it creates cgroups).
    Demo,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(p) => Config::load(p)?,
        None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Config::load(std::path::Path::new(DEFAULT_CONFIG_PATH))?
        }
        None => Config::default(),
    };
    if let Some(s) = &cli.socket {
        config.socket.clone_from(s);
    }
    if let Some(s) = &cli.state_dir {
        config.state_dir.clone_from(s);
    }
    if let Some(s) = &cli.shims_dir {
        config.shims_dir.clone_from(s);
    }
    if let Some(s) = &cli.cgroup_parent {
        config.cgroup_parent.clone_from(s);
    }
    if let Some(f) = &cli.log_format {
        config.log_format = if f == "text" {
            LogFormat::Text
        } else {
            LogFormat::Json
        };
    }
    Ok(config)
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LMI_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
    let cli = Cli::parse();
    let config = load_config(&cli)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            print!(
                "{}",
                toml::to_string(&config).context("rendering the configuration")?
            );
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
}

impl Daemon {
    /// Sets up cgroups, the catalog and capacity, binds the control socket and starts serving.
    pub(crate) async fn start(config: &Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
        let cgroups = cgroup::detect(&config.cgroup_parent).context("setting up cgroups")?;
        let catalog = Catalog::load(config.catalog.as_deref())?;
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
        let sandbox = {
            let (c, dir, name) = (
                config.sandbox.clone(),
                config.state_dir.clone(),
                config.cgroup_parent.clone(),
            );
            tokio::task::spawn_blocking(move || Sandbox::start(&c, &dir, &name))
                .await
                .context("setting up the sandbox")?
                .context(
                    "setting up the sandbox (hosts without network namespaces, ip or nft can run with \
                     sandbox.network_isolation = false)",
                )?
        };
        let unix = server::bind_socket(&config.socket)?;
        let tcp = server::bind_tcp(config).await?;
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
            cgroups,
            Arc::new(ProcessSpawner),
            Arc::new(sandbox),
        );
        let mut background = vec![tokio::spawn(agent.clone().run_sampler())];
        if config.scaler.endpoint.is_some() {
            background.push(tokio::spawn(lmi_agent::scaler::run(
                agent.clone(),
                config.scaler.clone(),
            )));
        }
        if let Some(addr) = config.metrics_listen {
            let listener = lmi_agent::metrics::bind(addr)
                .await
                .with_context(|| format!("binding metrics_listen {addr}"))?;
            tracing::info!(%addr, "metrics on /metrics");
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
        Ok(Self {
            agent,
            stop_tx,
            server,
            socket: config.socket.clone(),
            background,
        })
    }

    /// Drains every environment (in-flight invokes get `grace`), removes all cgroups, stops the listeners.
    pub(crate) async fn shutdown(self, grace: Duration) -> anyhow::Result<()> {
        self.agent.shutdown(grace).await;
        for task in &self.background {
            task.abort();
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

async fn run(config: Config) -> anyhow::Result<()> {
    let mut daemon = Daemon::start(&config).await?;
    lmi_agent::notify::notify_or_log("READY=1");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
        r = &mut daemon.server => {
            // The listeners died on their own: stop everything, report why.
            daemon.agent.shutdown(Duration::ZERO).await;
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            };
        }
    }
    lmi_agent::notify::notify_or_log("STOPPING=1");
    let grace = Duration::from_secs(u64::from(config.environments.delete_grace_seconds));
    daemon.shutdown(grace).await?;
    tracing::info!("lmi-agent stopped");
    Ok(())
}
