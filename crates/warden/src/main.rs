use std::path::PathBuf;
use std::process::ExitCode;

use axum::http::Method;
use clap::{Parser, Subcommand};
use warden::cli::{self, Client};

/// mimalloc rather than glibc's malloc: on the proxy's hot path glibc's allocator was about a
/// tenth of a request's instructions (its slow path for blocks past its per-thread cache).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "warden", version, about = "Wakes AI services on demand and puts idle ones to sleep")]
struct Cli {
    /// Where a running warden listens (for the client commands).
    #[arg(long, global = true, env = "WARDEN_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token for the admin API.
    #[arg(long, global = true, env = "WARDEN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Show every service: state, idle time, when it sleeps, memory.
    Status {
        /// Print the admin API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a service now and wait until it is ready.
    Wake { name: String },
    /// Stop a service now.
    Sleep { name: String },
    /// The last lines a service wrote (its log file, earlier runs included).
    Logs {
        name: String,
        /// How many lines.
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
    },
    /// Make the running warden read its config file again (as SIGHUP does); prints what changed.
    Reload {
        /// Print the admin API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What starting a service now would do (which services it would offload); changes nothing.
    Plan {
        name: String,
        /// Print the admin API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A client's spend this month against its budget, by model ("anonymous" in open mode).
    Usage {
        /// The client's name ("anonymous" in open mode).
        #[arg(default_value = "anonymous")]
        client: String,
        /// Print the admin API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What the optimizer saved a client this month: cache hits, downgrades, off-peak runs.
    Savings {
        /// The client's name ("anonymous" in open mode).
        #[arg(default_value = "anonymous")]
        client: String,
        /// Print the admin API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The priority queue: what waits, by class, and what runs.
    Queue {
        /// Print the admin API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Memory pressure: level and trend per device, CPU, the rung each laddered model is served
    /// by, the latest switches and suggestions.
    Pressure {
        /// Print the admin API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// How each model and task performs: requests, success, p50/p95 latency, first byte, tokens/s.
    Performance {
        /// How far back ("15m", "1h", "24h").
        #[arg(long, default_value = "1h")]
        since: String,
        /// Print the admin API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Memory capacity and use per device, and each service's estimate and measured footprint.
    Resources {
        /// Print the admin API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a config file; errors name the key and line.
    Check {
        /// The config file.
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// The config file, named as `serve` takes it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let client = || Client::new(&cli.url, cli.admin_token.clone());
    match cli.command {
        Cmd::Serve { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let config = warden::config::load(&config).map_err(|e| format!("{}: {e}", config.display()))?;
            warden::server::serve(config).await
        }
        Cmd::Config { command: ConfigCmd::Check { file, config } } => {
            let file = file.or(config).expect("clap requires one");
            let cfg = warden::config::load(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            // Valid, but would it run? Programs, containers and images that are not there.
            let warnings = warden::driver::preflight::warnings(&cfg).await;
            for w in &warnings {
                println!("warning: {w}");
            }
            let (services, models) =
                (cli::counted(cfg.services.len() as u64, "service"), cli::counted(cfg.models.len() as u64, "model"));
            match warnings.len() {
                0 => println!("{}: ok ({services}, {models})", file.display()),
                n => println!("{}: ok ({services}, {models}), {}", file.display(), cli::counted(n as u64, "warning")),
            }
            Ok(())
        }
        Cmd::Status { json } => cli::status(&client(), json).await,
        Cmd::Plan { name, json } => cli::plan(&client(), &name, json).await,
        Cmd::Resources { json } => cli::resources(&client(), json).await,
        Cmd::Pressure { json } => cli::pressure(&client(), json).await,
        Cmd::Performance { since, json } => cli::performance(&client(), &since, json).await,
        Cmd::Usage { client: name, json } => cli::usage(&client(), &name, json).await,
        Cmd::Queue { json } => cli::queue(&client(), json).await,
        Cmd::Savings { client: name, json } => cli::savings(&client(), &name, json).await,
        Cmd::Wake { name } => cli::wake(&client(), &name).await,
        Cmd::Logs { name, lines } => {
            let got = client().call(Method::GET, &format!("/admin/services/{name}/logs?lines={lines}")).await?;
            for line in got["lines"].as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or_default());
            }
            Ok(())
        }
        Cmd::Reload { json } => cli::reload(&client(), json).await,
        Cmd::Sleep { name } => {
            let svc = client().call(Method::POST, &format!("/admin/services/{name}/stop")).await?;
            println!("{name} is {}", svc["state"].as_str().unwrap_or("?"));
            Ok(())
        }
    }
}
