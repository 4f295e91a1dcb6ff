//! `cladnet`: the command-line client of the CLADNet controller.
//!
//! Manages networks, peers, join tokens, remote commands and connectivity tests over the
//! controller's gRPC API (`cladnet.v1.NetworkService`). Human output is tables and
//! `key: value` blocks; `--json` prints the proto3 JSON of the response message, a stable
//! interface for scripts. See `docs/cli.md` for every command, the exit codes and the
//! environment variables.
#![forbid(unsafe_code)]

mod client;
mod commands;
mod error;
mod output;
mod parse;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    client::{Client, DEFAULT_CONTROLLER, Settings},
    commands::{
        Ctx, conntest::TestCmd, network::NetworkCmd, peer::PeerCmd, remote::CommandArgs,
        route::RouteCmd, token::TokenCmd,
    },
};

/// Command-line client of the CLADNet controller.
#[derive(Debug, Parser)]
#[command(
    name = "cladnet",
    version,
    about,
    after_help = "Exit codes: 0 ok, 1 other error, 2 usage or invalid argument, 3 not found, \
                  4 authentication or permission, 5 controller unavailable or timed out, \
                  6 conflict (already exists, failed precondition, concurrent update)."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub(crate) struct GlobalArgs {
    /// Controller URL; https:// uses TLS (system roots, --ca-cert or --pin).
    #[arg(
        long,
        global = true,
        env = "CLADNET_CONTROLLER",
        value_name = "URL",
        default_value = DEFAULT_CONTROLLER,
        value_parser = parse::controller_url
    )]
    controller: String,
    /// CA certificate (PEM) to trust for an https:// controller instead of the system roots.
    #[arg(long, global = true, env = "CLADNET_CA_CERT", value_name = "PATH")]
    ca_cert: Option<PathBuf>,
    /// Pin of an https:// controller's key (`sha256:<hex>`, from `cladnet-controller
    /// show-pin` or `cladnet token create`): exactly that key is trusted, no CA needed.
    #[arg(
        long,
        global = true,
        env = "CLADNET_CONTROLLER_PIN",
        value_name = "PIN",
        value_parser = parse::pin
    )]
    pin: Option<cladnet_proto::tls::Pin>,
    /// Admin token (prefer --token-file or the environment: arguments are visible to other
    /// users of the machine).
    #[arg(
        long,
        global = true,
        env = "CLADNET_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// File holding the admin token (the controller writes one); used when no --token is given.
    /// Without either, /var/lib/cladnet/admin.token is read if it exists.
    #[arg(long, global = true, env = "CLADNET_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Print the proto3 JSON of the response instead of tables (stable for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the connection and for each call (1..=3600).
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    timeout: u64,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Networks: recommend an address space, create, list, show, update, delete.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// List the peers of a network.
    Peers {
        /// Network id.
        network: String,
    },
    /// One peer: show (with its links), delete, add an external WireGuard peer, print its
    /// WireGuard configuration.
    #[command(subcommand)]
    Peer(PeerCmd),
    /// Prefixes peers advertise (pod networks, subnets): list, approve, reject.
    #[command(subcommand)]
    Route(RouteCmd),
    /// Join tokens: create, list, revoke.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Send a remote command to every peer of a network, or one.
    #[command(name = "command")]
    Remote(CommandArgs),
    /// Connectivity tests: start one, show its RTT matrix.
    #[command(subcommand)]
    Test(TestCmd),
    /// Check that the controller and its store are healthy (needs no token).
    Health,
}

impl Cli {
    /// How to reach the controller.
    fn settings(&self) -> Settings {
        Settings {
            controller: self.global.controller.clone(),
            ca_cert: self.global.ca_cert.clone(),
            pin: self.global.pin,
            token: self.global.token.clone(),
            token_file: self.global.token_file.clone(),
            timeout: Duration::from_secs(self.global.timeout),
        }
    }
}

/// Connects and runs the command.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let need_token = !matches!(cli.command, Command::Health);
    let client = Client::connect(&cli.settings(), need_token).await?;
    let mut ctx = Ctx {
        client,
        json: cli.global.json,
    };
    match cli.command {
        Command::Network(cmd) => commands::network::run(cmd, &mut ctx).await,
        Command::Peers { network } => commands::peer::list_peers(network, &mut ctx).await,
        Command::Peer(cmd) => commands::peer::run(cmd, &mut ctx).await,
        Command::Route(cmd) => commands::route::run(cmd, &mut ctx).await,
        Command::Token(cmd) => commands::token::run(cmd, &mut ctx).await,
        Command::Remote(args) => commands::remote::run(args, &mut ctx).await,
        Command::Test(cmd) => commands::conntest::run(cmd, &mut ctx).await,
        Command::Health => commands::health::run(&mut ctx).await,
    }
}

/// A call that failed on the connection against an `http://` URL may have met a TLS port whose
/// answer lost the race against its close: look once more, on a fresh connection, so that the
/// error says to use `https://` instead of "transport error".
async fn diagnose(result: anyhow::Result<()>, url: &str) -> anyhow::Result<()> {
    let Err(err) = result else {
        return Ok(());
    };
    let on_connection = matches!(
        err.downcast_ref::<error::CliError>(),
        Some(error::CliError::Call { code, .. })
            if matches!(code, tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal)
    );
    if on_connection && let Some(tls) = cladnet_proto::tls::sniff_tls_on_plain_url(url).await {
        return Err(error::CliError::Tls(tls.to_string()).into());
    }
    Err(err)
}

fn main() -> ExitCode {
    // Usage errors exit with 2, --help and --version with 0 (clap's convention).
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = cli.global.controller.clone();
    match runtime.block_on(async {
        let result = run(cli).await;
        diagnose(result, &url).await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(error::class_of(&err).code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cladnet").chain(args.iter().copied()))
    }

    /// The rendered error of a rejected command line.
    fn rejected(args: &[&str]) -> String {
        let err = parse(args).expect_err("accepted");
        assert_ne!(err.kind(), ErrorKind::DisplayHelp);
        assert_eq!(err.exit_code(), 2, "{err}");
        err.to_string()
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn globals_and_defaults() {
        let cli = parse(&["health"]).unwrap();
        assert!(matches!(cli.command, Command::Health));
        assert_eq!(cli.global.timeout, 10);
        assert!(!cli.global.json);
        // Global flags go before or after the subcommand.
        let cli = parse(&[
            "--controller",
            "https://ctl.example:8053/",
            "network",
            "list",
            "--json",
            "--timeout",
            "3",
            "--token",
            "t",
        ])
        .unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.timeout, 3);
        assert_eq!(cli.global.controller, "https://ctl.example:8053");
        assert_eq!(cli.global.token.as_deref(), Some("t"));
        assert!(matches!(cli.command, Command::Network(NetworkCmd::List)));
    }

    /// A valid WireGuard public key.
    const KEY: &str = "q3Vh0e9y1xVvM8nH0y8o5b0P1o3F5w9J2zWmC2Kp3Ek=";

    #[test]
    fn parses_every_command() {
        let ok: &[&[&str]] = &[
            &[
                "network",
                "recommend",
                "--cidr",
                "192.168.1.10/24",
                "--cidr",
                "10.0.0.0/16",
            ],
            &[
                "network",
                "recommend",
                "--hosts",
                "200",
                "--network",
                "net-1",
            ],
            &["network", "create", "prod", "--cidr", "auto"],
            &[
                "network",
                "create",
                "prod",
                "--cidr",
                "10.77.0.0/24",
                "--id",
                "net-1",
                "--description",
                "d",
                "--rule-type",
                "cost-prioritized",
                "--encryption",
                "inter-site",
            ],
            &["network", "list"],
            &["network", "show", "net-1"],
            &["network", "update", "net-1", "--encryption", "never"],
            &["network", "delete", "net-1"],
            &["peers", "net-1"],
            &["peer", "show", "net-1", "h-a"],
            &["peer", "delete", "net-1", "h-a"],
            &[
                "peer",
                "add-external",
                "net-1",
                "--name",
                "laptop",
                "--public-key",
                KEY,
                "--endpoint",
                "198.51.100.20:51820",
                "--ip",
                "10.77.0.50",
            ],
            &[
                "peer",
                "add-external",
                "net-1",
                "--name",
                "l",
                "--public-key",
                KEY,
            ],
            &["peer", "wg-config", "net-1", "ext-laptop"],
            &[
                "token",
                "create",
                "net-1",
                "--ttl",
                "7d",
                "--description",
                "ci",
            ],
            &["token", "list", "net-1"],
            &["token", "revoke", "net-1", "t1"],
            &["command", "net-1", "up"],
            &["command", "net-1", "disable-encryption", "--host", "h-a"],
            &["test", "start", "net-1", "--trials", "5"],
            &["test", "show", "net-1", "t-1"],
            &["health"],
        ];
        for args in ok {
            if let Err(e) = parse(args) {
                panic!("{args:?} rejected: {e}");
            }
        }
    }

    #[test]
    fn parsed_values() {
        let cli = parse(&["token", "create", "n", "--ttl", "1h30m"]).unwrap();
        let Command::Token(TokenCmd::Create { ttl, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(ttl, Some(5_400));
    }

    #[test]
    fn rejects_bad_flags_naming_them() {
        let cases: &[(&[&str], &str)] = &[
            (&["network", "recommend", "--hosts", "0"], "--hosts"),
            (
                &["network", "recommend", "--cidr", "300.1.1.1/24"],
                "--cidr",
            ),
            (&["network", "create", "n", "--cidr", "bogus"], "--cidr"),
            (&["network", "create", "n"], "--cidr"),
            (
                &["network", "create", "n", "--cidr", "auto", "--id", "Bad_Id"],
                "--id",
            ),
            (
                &[
                    "network",
                    "create",
                    "n",
                    "--cidr",
                    "auto",
                    "--rule-type",
                    "x",
                ],
                "--rule-type",
            ),
            (
                &[
                    "network",
                    "create",
                    "n",
                    "--cidr",
                    "auto",
                    "--encryption",
                    "x",
                ],
                "--encryption",
            ),
            (&["token", "create", "n", "--ttl", "90"], "--ttl"),
            (&["token", "create", "n", "--ttl", "1y"], "--ttl"),
            (&["token", "create", "n", "--ttl", "0h"], "--ttl"),
            (&["test", "start", "n", "--trials", "0"], "--trials"),
            (&["test", "start", "n", "--trials", "101"], "--trials"),
            (&["--timeout", "0", "health"], "--timeout"),
            (
                &["--controller", "127.0.0.1:8053", "health"],
                "--controller",
            ),
            (&["network", "update", "n"], "--name"),
            (&["command", "n", "reboot"], "reboot"),
            (&["peer", "show", "n"], "HOST_ID"),
            (
                &[
                    "peer",
                    "add-external",
                    "n",
                    "--name",
                    "Bad",
                    "--public-key",
                    KEY,
                ],
                "--name",
            ),
            (
                &[
                    "peer",
                    "add-external",
                    "n",
                    "--name",
                    "l",
                    "--public-key",
                    "AAAA",
                ],
                "--public-key",
            ),
            (
                &[
                    "peer",
                    "add-external",
                    "n",
                    "--name",
                    "l",
                    "--public-key",
                    KEY,
                    "--endpoint",
                    "1.2.3.4",
                ],
                "--endpoint",
            ),
            (
                &[
                    "peer",
                    "add-external",
                    "n",
                    "--name",
                    "l",
                    "--public-key",
                    KEY,
                    "--ip",
                    "10.0.0.0/24",
                ],
                "--ip",
            ),
            (
                &["peer", "add-external", "n", "--name", "l"],
                "--public-key",
            ),
            (&["peer", "wg-config", "n"], "HOST_ID"),
        ];
        for (args, flag) in cases {
            let msg = rejected(args);
            assert!(msg.contains(flag), "{args:?}: {flag} not named in: {msg}");
        }
    }
}
