//! `cladnet-agent`: the CLADNet agent daemon and its maintenance commands.
#![forbid(unsafe_code)]

use cladnet_agent::{daemon, ebpf};

use std::path::PathBuf;

use anyhow::Context as _;
use cladnet_common::{maps::PIN_ROOT, wire::TUNNEL_PORT};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// CLADNet agent: carries a host's overlay traffic.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join a network and carry its traffic (the daemon). Settings come from --config and
    /// are overridden by flags.
    Run {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<daemon::Settings>,
    },
    /// Check a configuration file (and flags) the way `run` would, and print the result
    /// (without the join token).
    CheckConfig {
        /// TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        settings: Box<daemon::Settings>,
    },
    /// Show the running agent's interface and peers (like `wg show`).
    Status {
        /// The running agent's data directory (its status socket lives there).
        #[arg(
            long,
            env = "CLADNET_DATA_DIR",
            default_value = "/var/lib/cladnet-agent"
        )]
        data_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show this node's identity (node id and public key), creating it on first use.
    Identity {
        /// Data directory holding the identity (files mode 0600).
        #[arg(
            long,
            env = "CLADNET_DATA_DIR",
            default_value = "/var/lib/cladnet-agent"
        )]
        data_dir: PathBuf,
    },
    /// Learn this host's public UDP endpoint from the controller's reflector.
    Probe {
        /// Reflector address (the controller's address, UDP).
        #[arg(long)]
        reflector: std::net::SocketAddr,
        /// Local UDP port to probe from (the tunnel port, so the NAT mapping is the real one).
        #[arg(long, default_value_t = TUNNEL_PORT)]
        local_port: u16,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage the in-kernel (eBPF) dataplane directly.
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
}

#[derive(Debug, Subcommand)]
enum DataplaneCommand {
    /// Load the eBPF programs, attach them to an underlay interface and pin them.
    Attach {
        /// Underlay interface (XDP ingress and TC egress).
        #[arg(long)]
        iface: String,
        /// Receive hook: auto (XDP driver, else XDP generic, else TC ingress), xdp-driver,
        /// xdp-generic or tc (also by the short names driver, generic).
        // `::std::option::Option`: clap parses the whole value, `auto` being `None`.
        #[arg(long = "rx-hook", visible_alias = "xdp-mode", default_value = "auto",
              value_parser = ebpf::RxHook::parse_choice)]
        rx_hook: ::std::option::Option<ebpf::RxHook>,
        /// bpffs directory for the pinned maps and links.
        #[arg(long, default_value = PIN_ROOT)]
        pin_dir: PathBuf,
        /// UDP port of the tunnel.
        #[arg(long, default_value_t = TUNNEL_PORT, value_parser = clap::value_parser!(u16).range(1..))]
        tunnel_port: u16,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the per-CPU counters of an attached dataplane, summed over CPUs.
    Stats {
        /// bpffs directory of the pins.
        #[arg(long, default_value = PIN_ROOT)]
        pin_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Detach the programs and remove the pins.
    Detach {
        /// bpffs directory of the pins.
        #[arg(long, default_value = PIN_ROOT)]
        pin_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Run { config, settings } => {
            let file = match &config {
                Some(path) => daemon::Settings::from_file(path)?,
                None => daemon::Settings::default(),
            };
            let cfg = file.overridden_by(*settings).resolve()?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(daemon::run(cfg, shutdown_signal()))
        }
        Command::CheckConfig { config, settings } => {
            let cfg = daemon::Settings::from_file(&config)?
                .overridden_by(*settings)
                .resolve()?;
            println!(
                "ok: network {} via {} (https trusts {}) as {} on udp/{}; data in {}; dataplane {:?}; metrics {}",
                cfg.network,
                cfg.controllers.join(", "),
                cfg.tls.trusted(),
                cfg.interface,
                cfg.listen_port,
                cfg.data_dir.display(),
                cfg.dataplane,
                cfg.metrics_listen
                    .map_or_else(|| "off".to_owned(), |a| a.to_string())
            );
            Ok(())
        }
        Command::Dataplane(cmd) => dataplane(cmd),
        Command::Status { data_dir, json } => {
            let status = daemon::status::query(&data_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", daemon::status::render(&status));
            }
            Ok(())
        }
        Command::Identity { data_dir } => {
            let id = cladnet_agent::identity::Identity::load_or_create(&data_dir)?;
            println!(
                "node id:    {}\npublic key: {}",
                id.node_id,
                id.public_key()
            );
            Ok(())
        }
        Command::Probe {
            reflector,
            local_port,
            json,
        } => {
            let seen = cladnet_agent::probe::probe(
                reflector,
                local_port,
                3,
                std::time::Duration::from_secs(1),
            )?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "publicEndpoint": seen.to_string() })
                );
            } else {
                println!("{seen}");
            }
            Ok(())
        }
    }
}

fn dataplane(cmd: DataplaneCommand) -> anyhow::Result<()> {
    match cmd {
        DataplaneCommand::Attach {
            iface,
            rx_hook,
            pin_dir,
            tunnel_port,
            json,
        } => {
            let attached = ebpf::attach(&iface, rx_hook, &pin_dir, tunnel_port)
                .with_context(|| format!("attaching the eBPF dataplane to {iface}"))?;
            if json {
                println!("{}", serde_json::to_string(&attached)?);
            } else {
                println!(
                    "attached to {} ({}: {}); pins in {}",
                    attached.iface,
                    attached.xdp_mode.describe(),
                    attached.xdp_reason,
                    attached.pin_dir.display()
                );
            }
        }
        DataplaneCommand::Stats { pin_dir, json } => {
            let rows = ebpf::read_stats(&pin_dir)
                .with_context(|| format!("reading counters from {}", pin_dir.display()))?;
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!("{:<16} {:>12} {:>16}", "COUNTER", "PACKETS", "BYTES");
                for r in rows {
                    println!("{:<16} {:>12} {:>16}", r.slot, r.packets, r.bytes);
                }
            }
        }
        DataplaneCommand::Detach { pin_dir } => {
            let found = ebpf::detach(&pin_dir)
                .with_context(|| format!("detaching the pins in {}", pin_dir.display()))?;
            if !found {
                println!("nothing attached in {}", pin_dir.display());
            }
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
