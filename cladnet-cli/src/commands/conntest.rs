//! `cladnet test start|show`: connectivity tests (every peer pings every other over the
//! overlay) and their RTT matrix.

use cladnet_proto::v1::{
    ConnectivityTest, GetConnectivityTestRequest, PairResult, StartConnectivityTestRequest,
};
use clap::Subcommand;

use super::Ctx;
use crate::output::{Table, key_values, list};

/// `cladnet test` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TestCmd {
    /// Ask every peer of a network to ping every other peer.
    Start {
        /// Network id.
        network: String,
        /// Pings per pair, 1..=100 (default: the controller's, 3).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
        trials: Option<u32>,
    },
    /// Show a test's progress and RTT matrix.
    #[command(visible_alias = "get")]
    Show {
        /// Network id.
        network: String,
        /// Test id (printed by `cladnet test start`).
        test_id: String,
    },
}

/// Runs a `cladnet test` subcommand.
pub(crate) async fn run(cmd: TestCmd, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        TestCmd::Start { network, trials } => {
            let fail = ctx
                .client
                .fail(format!("starting a connectivity test in network {network}"));
            let test = ctx
                .client
                .api
                .start_connectivity_test(StartConnectivityTestRequest {
                    cladnet_id: network,
                    trial_count: trials.unwrap_or(0),
                })
                .await
                .map_err(fail)?
                .into_inner();
            ctx.emit(&test, |t| {
                let mut s = summary(t);
                s.push_str(&format!(
                    "\nResults: cladnet test show {} {}\n",
                    t.cladnet_id, t.test_id
                ));
                s
            })
        }
        TestCmd::Show { network, test_id } => {
            let fail = ctx.client.fail(format!(
                "reading connectivity test {test_id} of network {network}"
            ));
            let test = ctx
                .client
                .api
                .get_connectivity_test(GetConnectivityTestRequest {
                    cladnet_id: network,
                    test_id,
                })
                .await
                .map_err(fail)?
                .into_inner();
            ctx.emit(&test, render)
        }
    }
}

/// The test's id, trials and progress.
fn summary(t: &ConnectivityTest) -> String {
    let status = if t.complete {
        "complete".to_owned()
    } else {
        format!(
            "running ({} of {} peers reported)",
            t.reported_host_ids.len(),
            t.host_ids.len()
        )
    };
    let mut pairs = vec![
        ("Test ID", t.test_id.clone()),
        ("Network", t.cladnet_id.clone()),
        ("Trials", t.trial_count.to_string()),
        ("Status", status),
        ("Peers", list(&t.host_ids)),
    ];
    if !t.complete {
        let waiting: Vec<String> = t
            .host_ids
            .iter()
            .filter(|h| !t.reported_host_ids.contains(h))
            .cloned()
            .collect();
        pairs.push(("Waiting for", list(&waiting)));
    }
    key_values(&pairs)
}

/// A test: summary, the matrix of average RTTs (rows: from, columns: to) and per-pair details.
pub(crate) fn render(t: &ConnectivityTest) -> String {
    let mut out = summary(t);
    if t.results.is_empty() {
        out.push_str("\nNo results yet.\n");
        return out;
    }

    // Participants: the peers asked, then any other host a result names, in order.
    let mut hosts: Vec<String> = t.host_ids.clone();
    for r in &t.results {
        for h in [&r.source_host_id, &r.destination_host_id] {
            if !hosts.contains(h) {
                hosts.push(h.clone());
            }
        }
    }
    // Label hosts by overlay IP where a result gives it, else by host id.
    let label = |host: &str| -> String {
        t.results
            .iter()
            .find_map(|r| {
                if r.source_host_id == host && !r.source_ip.is_empty() {
                    Some(r.source_ip.clone())
                } else if r.destination_host_id == host && !r.destination_ip.is_empty() {
                    Some(r.destination_ip.clone())
                } else {
                    None
                }
            })
            .unwrap_or_else(|| host.to_owned())
    };
    let labels: Vec<String> = hosts.iter().map(|h| label(h)).collect();

    out.push_str("\nAverage RTT (ms), from row to column:\n");
    let mut matrix = Table::new(std::iter::once("FROM \\ TO".to_owned()).chain(labels.clone()));
    for (i, from) in hosts.iter().enumerate() {
        let mut row = vec![labels[i].clone()];
        for to in &hosts {
            let cell = t
                .results
                .iter()
                .find(|r| &r.source_host_id == from && &r.destination_host_id == to)
                .map(matrix_cell)
                .unwrap_or_default();
            row.push(cell);
        }
        matrix.row(row);
    }
    out.push_str(&matrix.render());

    out.push_str("\nPairs:\n");
    let mut pairs = Table::new([
        "FROM", "TO", "MIN", "AVG", "MAX", "STDDEV", "SENT", "RECEIVED", "LOSS",
    ]);
    for r in &t.results {
        pairs.row([
            label(&r.source_host_id),
            label(&r.destination_host_id),
            ms(r.min_rtt_ms),
            ms(r.avg_rtt_ms),
            ms(r.max_rtt_ms),
            ms(r.stddev_rtt_ms),
            r.packets_sent.to_string(),
            r.packets_received.to_string(),
            loss_percent(r)
                .map(|l| format!("{l:.0}%"))
                .unwrap_or_default(),
        ]);
    }
    out.push_str(&pairs.render());
    out
}

/// One matrix cell: the average RTT, `lost` when nothing came back, the loss when partial.
fn matrix_cell(r: &PairResult) -> String {
    if r.packets_sent > 0 && r.packets_received == 0 {
        return "lost".into();
    }
    match loss_percent(r) {
        Some(loss) if loss > 0.0 => format!("{} ({loss:.0}% loss)", ms(r.avg_rtt_ms)),
        _ => ms(r.avg_rtt_ms),
    }
}

/// Packet loss in percent, from the packets sent and received.
fn loss_percent(r: &PairResult) -> Option<f64> {
    (r.packets_sent > 0).then(|| {
        let lost = r.packets_sent.saturating_sub(r.packets_received);
        f64::from(lost) * 100.0 / f64::from(r.packets_sent)
    })
}

/// Milliseconds with two decimals.
fn ms(v: f64) -> String {
    format!("{v:.2}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(from: (&str, &str), to: (&str, &str), avg: f64, sent: u32, recv: u32) -> PairResult {
        PairResult {
            source_host_id: from.0.into(),
            source_ip: from.1.into(),
            destination_host_id: to.0.into(),
            destination_ip: to.1.into(),
            min_rtt_ms: avg - 0.1,
            avg_rtt_ms: avg,
            max_rtt_ms: avg + 0.1,
            stddev_rtt_ms: 0.05,
            packets_sent: sent,
            packets_received: recv,
            packet_loss: 0.0,
        }
    }

    #[test]
    fn renders_rtt_matrix() {
        let a = ("h-a", "10.77.0.1");
        let b = ("h-b", "10.77.0.2");
        let t = ConnectivityTest {
            cladnet_id: "net-1".into(),
            test_id: "t-1".into(),
            trial_count: 3,
            host_ids: vec!["h-a".into(), "h-b".into(), "h-c".into()],
            reported_host_ids: vec!["h-a".into(), "h-b".into()],
            results: vec![pair(a, b, 1.5, 3, 3), pair(b, a, 1.25, 3, 2)],
            complete: false,
        };
        let out = render(&t);
        assert!(
            out.starts_with(
                "\
Test ID:      t-1
Network:      net-1
Trials:       3
Status:       running (2 of 3 peers reported)
Peers:        h-a, h-b, h-c
Waiting for:  h-c
"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "\
FROM \\ TO  10.77.0.1        10.77.0.2  h-c
10.77.0.1  -                1.50       -
10.77.0.2  1.25 (33% loss)  -          -
h-c        -                -          -
"
            ),
            "{out}"
        );
        assert!(
            out.ends_with(
                "\
FROM       TO         MIN   AVG   MAX   STDDEV  SENT  RECEIVED  LOSS
10.77.0.1  10.77.0.2  1.40  1.50  1.60  0.05    3     3         0%
10.77.0.2  10.77.0.1  1.15  1.25  1.35  0.05    3     2         33%
"
            ),
            "{out}"
        );
    }

    #[test]
    fn lost_pairs_and_no_results() {
        let r = pair(("a", ""), ("b", ""), 0.0, 3, 0);
        assert_eq!(matrix_cell(&r), "lost");
        let t = ConnectivityTest {
            test_id: "t".into(),
            complete: true,
            ..Default::default()
        };
        let out = render(&t);
        assert!(out.contains("Status:   complete\n"), "{out}");
        assert!(out.ends_with("No results yet.\n"));
    }
}
