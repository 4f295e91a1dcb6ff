//! Plain WireGuard clients join a CLADNet network as external peers: wireguard-go and
//! boringtun, configured with `wg` from the wg-quick text `cladnet peer wg-config` prints,
//! talk to CLADNet agents (our own WireGuard, cladnet-wg) across the 3-cloud topology — one
//! agent behind masquerade NAT, two behind 1:1 NAT, the client behind 1:1 NAT. A client whose
//! key is not registered gets no answer.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use cladnet_tests::{
    Mesh, Nat, SiteLabels, Topology,
    external::{Implementation, WgClient, WgQuick, high_address},
    leftovers, require_netns, skip_or_fail, standard_clouds,
};
use ipnet::Ipv4Net;

const UP: Duration = Duration::from_secs(30);
const TRANSFER: usize = 1 << 20;
/// Where the clients listen.
const WG_PORT: u16 = 51820;
/// The agents: aws (masquerade NAT), gcp and azure (1:1 NAT).
const AGENTS: [(&str, &str, &str); 3] = [
    ("a1", "aws", "vpc-a"),
    ("g1", "gcp", "vpc-g"),
    ("z1", "azure", "vpc-z"),
];

/// The agent_mesh clouds (aws and gcp sharing 192.168.1.0/24, azure on 10.0.0.0/24, the
/// controller in ops), plus "lab" (1:1 NAT) for the clients: `x1` registered, `r1` not, and
/// "cafe" (masquerade) with `m1` for a roaming client.
fn clouds() -> Topology {
    standard_clouds(&["a1"])
        .cloud("lab", "172.20.0.0/24", Nat::OneToOne)
        .host("lab", "x1")
        .host("lab", "r1")
        .cloud("cafe", "192.168.1.0/24", Nat::Masquerade)
        .host("cafe", "m1")
        .build()
        .expect("topology")
}

/// The controller and the three agents, meshed.
fn start_mesh(cidr: &str) -> Mesh {
    let started = Instant::now();
    let mut mesh = Mesh::start(clouds(), "ctl", cidr, &[]);
    for (host, provider, vpc) in AGENTS {
        mesh.start_agent(host, SiteLabels { provider, vpc }, &[]);
    }
    let hosts: Vec<&str> = AGENTS.iter().map(|a| a.0).collect();
    mesh.wait_mesh(&hosts, UP);
    eprintln!(
        "controller + {} agents meshed in {:.1} s",
        hosts.len(),
        started.elapsed().as_secs_f64()
    );
    mesh
}

/// Whether `imp` is installed; if not, reports the skip (a failure under CI).
fn available(imp: Implementation) -> bool {
    match imp.binary() {
        Ok(_) => true,
        Err(reason) => {
            skip_or_fail(module_path!(), &reason);
            false
        }
    }
}

/// Panics with the client's state, its log and the mesh's logs.
fn fail(mesh: &Mesh, client: &WgClient, what: &str) -> ! {
    panic!(
        "{what}\n--- wg show {} ---\n{}\n--- {} log ---\n{}\n{}",
        client.iface,
        client.show(),
        client.implementation().program(),
        client.log_tail(),
        mesh.logs()
    )
}

/// The wg-config file lists every agent exactly as the controller knows it: its key, public
/// endpoint, overlay /32 and the keepalive.
fn check_config(mesh: &Mesh, cfg: &WgQuick, name: &str) {
    let me = mesh.peer(name).expect("external peer listed");
    let net: Ipv4Net = me["ipv4Cidr"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .expect("ipv4Cidr");
    let ip: Ipv4Addr = me["ip"].as_str().and_then(|i| i.parse().ok()).expect("ip");
    assert_eq!(
        cfg.addresses,
        vec![Ipv4Net::new(ip, net.prefix_len()).unwrap()],
        "Address is the client's overlay address with the network's prefix"
    );
    assert_eq!(
        cfg.peers.len(),
        AGENTS.len(),
        "one [Peer] per agent: {cfg:?}"
    );
    for (host, ..) in AGENTS {
        let agent = mesh.peer(host).expect("agent listed");
        let key = agent["publicKey"].as_str().expect("publicKey");
        let section = cfg
            .peers
            .iter()
            .find(|p| p.public_key == key)
            .unwrap_or_else(|| panic!("no [Peer] for {host} ({key}) in {cfg:?}"));
        assert_eq!(
            section.endpoint.map(|e| e.to_string()).as_deref(),
            agent["publicEndpoint"].as_str(),
            "{host}'s Endpoint"
        );
        let overlay: Ipv4Addr = agent["ip"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            section.allowed_ips,
            vec![Ipv4Net::new(overlay, 32).unwrap()]
        );
        assert_eq!(section.persistent_keepalive, Some(25));
        assert_eq!(section.comment, agent["hostId"].as_str().unwrap());
    }
}

/// Waits until the client has completed a handshake with every agent and moved bytes both
/// ways with it (boringtun shows a handshake less than a second old as none: retried).
fn check_wg_show(mesh: &Mesh, client: &WgClient) {
    let keys: Vec<String> = AGENTS
        .iter()
        .map(|(h, ..)| {
            mesh.peer(h).unwrap()["publicKey"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = client.stats().unwrap_or_else(|e| fail(mesh, client, &e));
        let good = keys.iter().all(|k| {
            stats.iter().any(|s| {
                &s.public_key == k
                    && s.handshake_age
                        .is_some_and(|a| a < Duration::from_secs(180))
                    && s.rx_bytes > 0
                    && s.tx_bytes > 0
            })
        });
        if good {
            for s in &stats {
                eprintln!(
                    "  {}: handshake {:?} ago, rx {} B, tx {} B",
                    s.public_key,
                    s.handshake_age.unwrap_or_default(),
                    s.rx_bytes,
                    s.tx_bytes
                );
            }
            return;
        }
        if Instant::now() > deadline {
            fail(
                mesh,
                client,
                &format!("wg show: no recent handshake or no traffic with some agent: {stats:?}"),
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Counts, on `host`, tunnel-port datagrams from and to `addr`, by WireGuard message type.
fn count_wg_messages(mesh: &Mesh, host: &str, addr: Ipv4Addr) {
    let rules = format!(
        "table ip wgmsgs {{\n chain input {{\n  type filter hook input priority 0;\n  \
         ip saddr {addr} udp dport 8055 @th,64,8 0x01 counter\n }}\n \
         chain output {{\n  type filter hook output priority 0;\n  \
         ip daddr {addr} udp sport 8055 counter\n }}\n}}\n"
    );
    mesh.topo
        .host(host)
        .netns()
        .load_nft(&rules)
        .expect("nft counters");
}

/// (handshake initiations received from, datagrams sent to) the address of
/// [`count_wg_messages`].
fn wg_messages(mesh: &Mesh, host: &str) -> (u64, u64) {
    let out = mesh
        .topo
        .host(host)
        .exec(["nft", "list", "table", "ip", "wgmsgs"])
        .expect("nft list");
    let counts: Vec<u64> = out
        .split("packets ")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    (counts[0], counts[1])
}

/// A client on x1 (1:1 NAT, registered with its endpoint) pings and moves verified bytes both
/// ways with every agent; then a client on r1 with an unregistered key, configured with the
/// same agents, gets nothing back.
fn external_peer_interop(imp: Implementation, cidr: &str) {
    let started = Instant::now();
    let mesh = start_mesh(cidr);
    let x1 = mesh.topo.host("x1");
    let client = WgClient::start(imp, x1, WG_PORT, &mesh.log_file("ext-x1"))
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.logs()));
    let endpoint = SocketAddrV4::new(x1.public_ip(), WG_PORT);
    let peer = mesh.add_external_peer("x1", &client.keys.public, Some(endpoint));
    assert_eq!(peer["hostId"], "ext-x1");
    assert_eq!(peer["state"], "up");
    assert_eq!(peer["publicEndpoint"], endpoint.to_string());
    let text = mesh.external_wg_config("x1");
    eprintln!("cladnet peer wg-config mesh ext-x1:\n{text}");
    let cfg = client
        .apply_wg_quick(&text, None)
        .unwrap_or_else(|e| fail(&mesh, &client, &e));
    check_config(&mesh, &cfg, "x1");
    let links = mesh.peer("x1").expect("x1")["links"].clone();
    for link in links.as_array().expect("links") {
        assert_eq!(link["mode"], "sealed", "links of an external peer: {links}");
    }

    let joined = Instant::now();
    let me = mesh.overlay_ip("x1");
    for (host, ..) in AGENTS {
        let agent = mesh.overlay_ip(host);
        let within = Instant::now() + UP;
        while !x1.pings(agent, 1) {
            if Instant::now() > within {
                fail(&mesh, &client, &format!("x1 cannot ping {host} ({agent})"));
            }
        }
        while !mesh.topo.host(host).pings(me, 1) {
            if Instant::now() > within {
                fail(&mesh, &client, &format!("{host} cannot ping x1 ({me})"));
            }
        }
        eprintln!(
            "x1 <-> {host}: pings both ways after {:.1} s",
            joined.elapsed().as_secs_f64()
        );
    }
    let mut port = 5600;
    for (host, ..) in AGENTS {
        for (from, to) in [("x1", host), (host, "x1")] {
            port += 1;
            let secs = mesh.verified_transfer(from, to, port, TRANSFER);
            eprintln!("{from} -> {to}: {TRANSFER} bytes verified in {secs:.2} s");
        }
    }
    check_wg_show(&mesh, &client);

    // A client whose key the network does not know, aimed at the same agents with the same
    // file and an unused overlay address: the agents drop its handshake initiations.
    let r1 = mesh.topo.host("r1");
    for (host, ..) in &AGENTS[1..] {
        count_wg_messages(&mesh, host, r1.public_ip());
    }
    let rogue = WgClient::start(imp, r1, WG_PORT, &mesh.log_file("rogue-r1"))
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.logs()));
    let net: Ipv4Net = cidr.parse().unwrap();
    let fake = Ipv4Net::new(high_address(net, 1), net.prefix_len()).unwrap();
    rogue
        .apply_wg_quick(&text, Some(fake))
        .unwrap_or_else(|e| fail(&mesh, &rogue, &e));
    for (host, ..) in AGENTS {
        let agent = mesh.overlay_ip(host);
        if r1.pings(agent, 3) {
            fail(&mesh, &rogue, &format!("an unregistered key pinged {host}"));
        }
    }
    let stats = rogue.stats().unwrap_or_else(|e| fail(&mesh, &rogue, &e));
    assert_eq!(stats.len(), AGENTS.len(), "{stats:?}");
    for s in &stats {
        assert!(
            s.handshake_age.is_none() && s.rx_bytes == 0,
            "the unregistered client heard back: {s:?}\n{}",
            rogue.show()
        );
    }
    for (host, ..) in &AGENTS[1..] {
        let (initiations, answers) = wg_messages(&mesh, host);
        eprintln!(
            "{host}: {initiations} initiations from the unregistered client, {answers} answers"
        );
        assert!(initiations > 0, "the initiations reached {host}");
        assert_eq!(answers, 0, "{host} answered an unregistered key");
    }
    // The registered client is unaffected.
    assert!(x1.pings(mesh.overlay_ip("g1"), 2), "x1 still reaches g1");
    eprintln!(
        "{} interop passed in {:.1} s",
        imp.program(),
        started.elapsed().as_secs_f64()
    );

    // Teardown leaves neither namespaces nor UAPI sockets behind.
    let prefix = mesh.topo.prefix().to_owned();
    let sockets: Vec<String> = [&client, &rogue]
        .iter()
        .map(|c| format!("/var/run/wireguard/{}.sock", c.iface))
        .collect();
    drop((rogue, client, mesh));
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    for s in sockets {
        assert!(!std::path::Path::new(&s).exists(), "{s} left behind");
    }
}

#[test]
fn wireguard_go_joins_as_an_external_peer() {
    require_netns!();
    if available(Implementation::WireguardGo) {
        external_peer_interop(Implementation::WireguardGo, "10.81.0.0/24");
    }
}

#[test]
fn boringtun_joins_as_an_external_peer() {
    require_netns!();
    if available(Implementation::Boringtun) {
        external_peer_interop(Implementation::Boringtun, "10.82.0.0/24");
    }
}

/// A roaming client behind masquerade NAT, registered without an endpoint: agents cannot
/// reach it until it sends, and its persistent keepalive (sent as soon as it is configured,
/// with no traffic of its own) opens the way, so agents with a reachable endpoint (1:1 NAT)
/// ping it first. An agent behind masquerade NAT is out of its reach (both sides behind NAT,
/// neither endpoint known to the other, no relay).
#[test]
fn roaming_wireguard_go_behind_nat_is_reached_through_its_keepalive() {
    require_netns!();
    if !available(Implementation::WireguardGo) {
        return;
    }
    let mesh = start_mesh("10.83.0.0/24");
    let m1 = mesh.topo.host("m1");
    let client = WgClient::start(
        Implementation::WireguardGo,
        m1,
        WG_PORT,
        &mesh.log_file("ext-m1"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.logs()));
    let peer = mesh.add_external_peer("m1", &client.keys.public, None);
    assert_eq!(peer["publicEndpoint"].as_str().unwrap_or_default(), "");
    let text = mesh.external_wg_config("m1");
    client
        .apply_wg_quick(&text, None)
        .unwrap_or_else(|e| fail(&mesh, &client, &e));
    let me = mesh.overlay_ip("m1");
    let configured = Instant::now();
    for host in ["g1", "z1"] {
        let within = Instant::now() + UP;
        while !mesh.topo.host(host).pings(me, 1) {
            if Instant::now() > within {
                fail(&mesh, &client, &format!("{host} cannot ping m1 ({me})"));
            }
        }
        eprintln!(
            "{host} -> m1 (no endpoint, behind masquerade): pings {:.1} s after configuration",
            configured.elapsed().as_secs_f64()
        );
        assert!(m1.pings(mesh.overlay_ip(host), 2), "m1 -> {host}");
    }
    mesh.verified_transfer("g1", "m1", 5701, TRANSFER);
    mesh.verified_transfer("m1", "z1", 5702, TRANSFER);
    eprintln!(
        "a1 (masquerade) <-> m1 (masquerade): {}",
        if m1.pings(mesh.overlay_ip("a1"), 2) {
            "reachable"
        } else {
            "unreachable, as expected without a known endpoint on either side"
        }
    );
}
