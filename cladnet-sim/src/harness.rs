//! The harness: N Nodes, each with a model engine and the agent's IO loop played by the
//! simulator (reflector probes, join, Watch stream, reports), on the virtual clock, the
//! virtual underlay and the controller model. Scenarios drive it with operator actions
//! (add, remove, move a node, change the policy, take the controller down) and check it with
//! [`Sim::all_pairs_deliver`] and [`Sim::stale`](crate::check).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use cladnet_common::reflector;
use cladnet_core::{
    node::{Command, Dropped, Event, Node, NodeConfig, WatchEvent, table::PeerState},
    policy::{Encryption, Policy, RuleType, Site},
};

use crate::{
    clock::{Agenda, Clock},
    controller::{Controller, Push},
    engine::{Engine, LegacyEngine, ModelEngine},
    rng::Rng,
    trace::Trace,
    underlay::{Datagram, Impairments, Nat, REFLECTOR, Receiver, Underlay},
};

/// How often the agent sends the reflector a keepalive probe (the agent's default).
pub const REFLECTOR_KEEPALIVE: Duration = Duration::from_millis(300);

/// How long the agent waits before retrying a control call that failed.
pub const CONTROL_RETRY: Duration = Duration::from_secs(1);

/// Wall-clock time at the virtual start (handshake timestamps), the same in every run.
const WALL_START: Duration = Duration::from_secs(1_800_000_000);

/// Every link PLAIN, public endpoints: what the simulator delivers end to end.
pub const PLAIN: Policy = Policy {
    rule: RuleType::Basic,
    encryption: Encryption::Never,
};

/// Which design the engines follow.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Design {
    /// Engines apply the Node's commands only.
    Node,
    /// The daemon keeps its own table and patches the kernel from events (before issue 12).
    Legacy,
}

/// A simulation's set-up.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// Nodes at the start.
    pub nodes: usize,
    /// Number of sites (VPCs); node `i` behind a NAT sits in site `i % sites` (a public
    /// host is a site of its own).
    pub sites: u16,
    /// The NAT in front of node `i`.
    pub nat: fn(usize) -> Nat,
    /// Impairments of the public underlay.
    pub impairments: Impairments,
    /// The network's policy at the start.
    pub policy: Policy,
    /// Which design the engines follow.
    pub design: Design,
}

impl SimConfig {
    /// `nodes` nodes in 5 sites, a mix of 1:1 NAT and public addresses, no impairments,
    /// PLAIN links on public endpoints.
    pub fn new(seed: u64, nodes: usize) -> Self {
        Self {
            seed,
            nodes,
            sites: 5,
            nat: |i| {
                if i % 3 == 1 {
                    Nat::Public
                } else {
                    Nat::OneToOne
                }
            },
            impairments: Impairments::default(),
            policy: PLAIN,
            design: Design::Node,
        }
    }
}

/// One simulated agent: its Node, its engine, and what its IO loop remembers.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) host: usize,
    pub(crate) site: u16,
    pub(crate) node: Node,
    /// Its WireGuard public key, as it joins with it.
    public_key: [u8; 32],
    pub(crate) engine: Box<dyn Engine>,
    pub(crate) alive: bool,
    pub(crate) joined: bool,
    /// Generation of the open Watch stream; `None` while it is closed.
    pub(crate) stream: Option<u64>,
    generation: u64,
    /// When the last Watch event was scheduled to arrive (a stream keeps its order).
    watch_at: Duration,
    /// The public endpoint the reflector last saw, and the newest probe answered.
    public: Option<SocketAddrV4>,
    newest_answer: u64,
    nonce: u64,
    pending_report: Option<SocketAddrV4>,
    timer: Option<Instant>,
}

/// A control call arriving at the controller.
#[derive(Clone, Copy, Debug)]
enum Rpc {
    Join,
    Report,
    Watch,
}

#[derive(Debug)]
enum Ev {
    Datagram(Datagram),
    Watch {
        member: usize,
        generation: u64,
        event: Box<WatchEvent>,
    },
    Timer(usize),
    ReflectorTick(usize),
    Rpc(usize, Rpc),
    ControllerUp,
}

/// The simulator.
#[derive(Debug)]
pub struct Sim {
    pub(crate) clock: Clock,
    /// Boxed: the agenda is a B-tree, and moving large items around in it is most of its cost.
    agenda: Agenda<Box<Ev>>,
    rng: Rng,
    pub(crate) underlay: Underlay,
    pub(crate) controller: Controller,
    pub(crate) members: Vec<Member>,
    by_id: BTreeMap<String, usize>,
    by_host: BTreeMap<usize, usize>,
    config: SimConfig,
    trace: Trace,
    pub(crate) delivered: BTreeSet<(usize, usize, u32)>,
    /// Probe rounds sent so far.
    pub(crate) rounds: u32,
    /// Why the Nodes dropped datagrams and packets, by reason.
    drops: BTreeMap<String, u64>,
}

impl Sim {
    /// A network of `config.nodes` nodes, all starting at the same instant.
    pub fn new(config: SimConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let underlay = Underlay::new(rng.fork(), config.impairments);
        let mut sim = Self {
            clock: Clock::default(),
            agenda: Agenda::default(),
            rng,
            underlay,
            controller: Controller::new(config.policy),
            members: Vec::new(),
            by_id: BTreeMap::new(),
            by_host: BTreeMap::new(),
            config: config.clone(),
            trace: Trace::default(),
            delivered: BTreeSet::new(),
            rounds: 0,
            drops: BTreeMap::new(),
        };
        for i in 0..config.nodes {
            sim.add_node((config.nat)(i));
        }
        sim
    }

    /// Starts one more node behind `nat` now; returns its index.
    pub fn add_node(&mut self, nat: Nat) -> usize {
        let i = self.members.len();
        // A host with a public address on its interface shares no private network: it is a
        // site of its own.
        let site = match nat {
            Nat::Public => 1000 + u16::try_from(i).unwrap_or(0),
            _ => u16::try_from(i).unwrap_or(0) % self.config.sites.max(1),
        };
        let host = self.underlay.add_host(site, nat);
        let config = NodeConfig {
            node_id: format!("node-{i:03}"),
            underlay_mtu: 1500,
            underlay_ip: Some(*self.underlay.private(host).0.ip()),
        };
        let engine: Box<dyn Engine> = match self.config.design {
            Design::Node => Box::new(ModelEngine::default()),
            Design::Legacy => Box::new(LegacyEngine::new(config.clone())),
        };
        self.by_id.insert(config.node_id.clone(), i);
        self.by_host.insert(host, i);
        // Its WireGuard key and randomness come from the seed; handshake timestamps from a
        // fixed wall clock at the virtual start.
        let mut key = [0u8; 32];
        cladnet_wg::CryptoRandom::fill_bytes(&mut self.rng, &mut key);
        let key = cladnet_wg::PrivateKey::from_bytes(key);
        let public_key = *key.public_key().as_bytes();
        let wall = cladnet_wg::WallClock::from_unix(self.clock.now(), WALL_START);
        let node = Node::new(config.clone()).with_wireguard(key, self.rng.fork(), wall);
        self.members.push(Member {
            id: config.node_id.clone(),
            host,
            site,
            node,
            public_key,
            engine,
            alive: true,
            joined: false,
            stream: None,
            generation: 0,
            watch_at: Duration::ZERO,
            public: None,
            newest_answer: 0,
            nonce: 0,
            pending_report: None,
            timer: None,
        });
        // The agent probes the reflector first (to join with its public endpoint), then
        // keeps probing; every node's first probe goes out now.
        let now = self.clock.elapsed();
        self.agenda.at(now, Box::new(Ev::ReflectorTick(i)));
        i
    }

    /// An operator deletes node `i`, and the node stops.
    pub fn remove_node(&mut self, i: usize) {
        let pushes = self.controller.remove(&self.members[i].id);
        self.stop(i, pushes, "remove");
    }

    /// Node `i` stops after the controller made `pushes`.
    fn stop(&mut self, i: usize, pushes: Vec<Push>, why: &str) {
        self.dispatch(pushes);
        self.members[i].alive = false;
        self.members[i].stream = None;
        self.underlay.stop_host(self.members[i].host);
        self.note(&format!("{why} {i}"));
    }

    /// Node `i` leaves gracefully: it reports `released` (its record and address stay) and
    /// stops.
    pub fn release_node(&mut self, i: usize) {
        let pushes = self
            .controller
            .set_state(&self.members[i].id, PeerState::Released);
        self.stop(i, pushes, "release");
    }

    /// Node `i`'s host roams: its NAT gets a new public address and loses every mapping.
    /// (Hosts with a public address of their own do not roam: the agent reports only the
    /// public endpoint the reflector sees, not a changed interface address.)
    pub fn move_node(&mut self, i: usize) {
        assert!(
            self.underlay.nat(self.members[i].host) != Nat::Public,
            "node {i} has a public address of its own and does not roam"
        );
        self.underlay.move_host(self.members[i].host);
        self.note(&format!("move {i}"));
    }

    /// An operator changes the policy.
    pub fn set_policy(&mut self, policy: Policy) {
        let pushes = self.controller.set_policy(policy);
        self.dispatch(pushes);
        self.note(&format!("policy {policy:?}"));
    }

    /// Changes the underlay's impairments.
    pub fn set_impairments(&mut self, impairments: Impairments) {
        self.underlay.set_impairments(impairments);
    }

    /// The controller goes down now for `outage`: every Watch stream ends and the agents
    /// retry until it is back.
    pub fn controller_outage(&mut self, outage: Duration) {
        self.controller.go_down();
        let now = self.clock.elapsed();
        for i in 0..self.members.len() {
            if self.members[i].stream.take().is_some() {
                let retry = CONTROL_RETRY + self.rng.millis(0, 500);
                self.agenda
                    .at(now + retry, Box::new(Ev::Rpc(i, Rpc::Watch)));
            }
        }
        self.agenda.at(now + outage, Box::new(Ev::ControllerUp));
        self.note("controller down");
    }

    /// Operator access to the controller model (e.g. to change a record while it is down).
    pub fn controller_mut(&mut self) -> &mut Controller {
        &mut self.controller
    }

    /// The controller model.
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.members[i].node
    }

    /// Indexes of the nodes that run.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].alive)
            .collect()
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.clock.elapsed()
    }

    /// Runs the simulation for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let limit = self.clock.elapsed() + d;
        while let Some((at, ev)) = self.agenda.pop_until(limit) {
            self.clock.advance_to(at);
            self.handle(*ev);
        }
        self.clock.advance_to(limit);
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.clock.now();
        match ev {
            Ev::Datagram(d) => self.on_datagram(d),
            Ev::Watch {
                member,
                generation,
                event,
            } => {
                let m = &mut self.members[member];
                if !m.alive || m.stream != Some(generation) {
                    return;
                }
                self.note(&format!("watch {member} {}", describe(&event)));
                let m = &mut self.members[member];
                m.engine.watch(now, &event);
                m.node.handle_watch_event(now, *event);
                self.drive(member);
            }
            Ev::Timer(i) => {
                let m = &mut self.members[i];
                if m.alive && m.node.poll_timeout().is_some_and(|t| t <= now) {
                    m.node.handle_timeout(now);
                    self.drive(i);
                }
            }
            Ev::ReflectorTick(i) => {
                let m = &mut self.members[i];
                if !m.alive {
                    return;
                }
                m.nonce += 1;
                let request = reflector::request(m.nonce).to_vec();
                let host = m.host;
                self.send(Some(host), REFLECTOR, request);
                let at = self.clock.elapsed() + REFLECTOR_KEEPALIVE;
                self.agenda.at(at, Box::new(Ev::ReflectorTick(i)));
            }
            Ev::Rpc(i, rpc) => self.on_rpc(i, rpc),
            Ev::ControllerUp => {
                self.controller.come_up();
                self.note("controller up");
            }
        }
    }

    fn on_datagram(&mut self, d: Datagram) {
        match self.underlay.receiver(&d) {
            None => self.note(&format!("unroutable {} -> {}", d.from, d.to)),
            Some(Receiver::Reflector) => {
                if let Some(nonce) = reflector::parse_request(&d.payload) {
                    let answer = reflector::response(nonce, d.from).to_vec();
                    self.send(None, d.from, answer);
                }
            }
            Some(Receiver::Host(h)) => {
                let i = self.by_host[&h];
                let now = self.clock.now();
                let m = &mut self.members[i];
                if !m.alive {
                    return;
                }
                let result = m
                    .node
                    .handle_datagram(now, SocketAddr::V4(d.from), &d.payload);
                self.note(&format!(
                    "rx {i} from {} {} {result:?}",
                    d.from,
                    d.payload.len()
                ));
                if let Err(reason) = result {
                    self.count_drop("rx", reason);
                }
                self.drive(i);
            }
        }
    }

    pub(crate) fn count_drop(&mut self, dir: &str, reason: Dropped) {
        *self.drops.entry(format!("{dir} {reason:?}")).or_default() += 1;
    }

    /// Why the Nodes dropped datagrams and packets so far, by reason.
    pub fn drops(&self) -> &BTreeMap<String, u64> {
        &self.drops
    }

    fn on_rpc(&mut self, i: usize, rpc: Rpc) {
        let now = self.clock.elapsed();
        let m = &self.members[i];
        if !m.alive {
            return;
        }
        let (id, public) = (m.id.clone(), m.public);
        let done = match rpc {
            Rpc::Join => {
                let (private, site) = self.underlay.private(m.host);
                let site = Site {
                    provider: "sim".into(),
                    vpc: format!("vpc-{site}"),
                    ..Site::default()
                };
                let key = m.public_key;
                let pushes = public.and_then(|p| self.controller.join(&id, site, p, private, key));
                pushes.map(|pushes| {
                    self.dispatch(pushes);
                    self.members[i].joined = true;
                    self.members[i].pending_report = None;
                    self.agenda.at(now, Box::new(Ev::Rpc(i, Rpc::Watch)));
                })
            }
            Rpc::Report => match m.pending_report {
                None => Some(()),
                Some(p) => self.controller.report_public(&id, p).map(|pushes| {
                    self.dispatch(pushes);
                    self.members[i].pending_report = None;
                }),
            },
            Rpc::Watch if m.stream.is_some() => Some(()),
            Rpc::Watch => self.controller.subscribe(&id).map(|push| {
                let m = &mut self.members[i];
                m.generation += 1;
                m.stream = Some(m.generation);
                self.dispatch(vec![push]);
            }),
        };
        self.note(&format!("rpc {i} {rpc:?} {}", done.is_some()));
        if done.is_none() {
            let retry = CONTROL_RETRY + self.rng.millis(0, 500);
            self.agenda.at(now + retry, Box::new(Ev::Rpc(i, rpc)));
        }
    }

    /// Schedules Watch events on their streams: 5–15 ms away, in order per stream.
    fn dispatch(&mut self, pushes: Vec<Push>) {
        let now = self.clock.elapsed();
        for Push { to, event } in pushes {
            let Some(&i) = self.by_id.get(&to) else {
                continue;
            };
            let Some(generation) = self.members[i].stream else {
                continue;
            };
            let at = (now + self.rng.millis(5, 15)).max(self.members[i].watch_at);
            self.members[i].watch_at = at;
            let ev = Ev::Watch {
                member: i,
                generation,
                event: Box::new(event),
            };
            self.agenda.at(at, Box::new(ev));
        }
    }

    /// Sends on the underlay and schedules the copies that arrive.
    fn send(&mut self, host: Option<usize>, to: SocketAddrV4, payload: Vec<u8>) {
        let now = self.clock.elapsed();
        for (delay, d) in self.underlay.send(host, to, payload) {
            self.agenda.at(now + delay, Box::new(Ev::Datagram(d)));
        }
    }

    /// The agent's IO loop after an input: commands to the engine, datagrams to the underlay,
    /// inner packets to the "TUN device", events to reports; then the Node's next timeout.
    pub(crate) fn drive(&mut self, i: usize) {
        let now = self.clock.elapsed();
        loop {
            let m = &mut self.members[i];
            if let Some(c) = m.node.poll_command() {
                m.engine.apply(&c);
                let what = match &c {
                    Command::Publish(f) => format!("cmd {i} publish {}", f.peers().count()),
                    other => format!("cmd {i} {other:?}"),
                };
                self.note(&what);
            } else if let Some(t) = m.node.poll_transmit() {
                let host = m.host;
                if let SocketAddr::V4(to) = t.to {
                    self.send(Some(host), to, t.payload);
                }
            } else if let Some(p) = m.node.poll_tun_packet() {
                self.on_tun_write(i, &p);
            } else if let Some(e) = m.node.poll_event() {
                m.engine.event(&e);
                self.note(&format!("event {i} {e:?}"));
                if let Event::Reflected { nonce, seen } = e {
                    self.on_reflected(i, nonce, seen);
                }
            } else {
                break;
            }
        }
        let m = &mut self.members[i];
        let next = m.node.poll_timeout();
        if next != m.timer {
            m.timer = next;
            if let Some(t) = next {
                let at = self.clock.offset(t).max(now);
                self.agenda.at(at, Box::new(Ev::Timer(i)));
            }
        }
    }

    /// The reflector answered: join with that endpoint, or report a change and re-open
    /// every peer path (as the agent does).
    fn on_reflected(&mut self, i: usize, nonce: u64, seen: SocketAddrV4) {
        let now = self.clock.elapsed();
        let m = &mut self.members[i];
        // Only the newest probe's answer counts: a late answer may predate a move.
        if nonce <= m.newest_answer {
            return;
        }
        m.newest_answer = nonce;
        if m.public == Some(seen) {
            return;
        }
        let first = m.public.is_none();
        m.public = Some(seen);
        if first {
            self.agenda.at(
                now + self.rng.millis(5, 15),
                Box::new(Ev::Rpc(i, Rpc::Join)),
            );
            return;
        }
        m.pending_report = Some(seen);
        m.node.punch();
        self.agenda.at(
            now + self.rng.millis(5, 15),
            Box::new(Ev::Rpc(i, Rpc::Report)),
        );
    }

    /// Records a step in the trace.
    pub(crate) fn note(&mut self, what: &str) {
        self.trace.step(self.clock.elapsed(), what);
    }

    /// Keeps a text log of every step (see [`Sim::log`]).
    pub fn keep_log(&mut self) {
        self.trace.keep_log();
    }

    /// The text log, when kept.
    pub fn log(&self) -> &[String] {
        self.trace.log()
    }

    /// The digest of the run so far, including what every node and engine holds now.
    pub fn digest(&self) -> u64 {
        let mut t = self.trace.clone();
        for m in &self.members {
            t.step(
                self.clock.elapsed(),
                &format!(
                    "{} {:?} {:?}",
                    m.id,
                    m.node.table().installed(),
                    m.engine.copies()
                ),
            );
        }
        t.step(
            self.clock.elapsed(),
            &format!("{:?}", self.underlay.stats()),
        );
        t.digest()
    }

    /// How many steps the run took.
    pub fn steps(&self) -> u64 {
        self.trace.steps()
    }

    /// The NAT in front of node `i`.
    pub fn nat(&self, i: usize) -> Nat {
        self.underlay.nat(self.members[i].host)
    }

    /// The underlay's counters.
    pub fn underlay_stats(&self) -> crate::underlay::UnderlayStats {
        self.underlay.stats()
    }

    /// Node `i`'s site.
    pub fn site(&self, i: usize) -> u16 {
        self.members[i].site
    }
}

/// A Watch event in a few words (the trace's).
fn describe(event: &WatchEvent) -> String {
    match event {
        WatchEvent::Snapshot { peers, .. } => format!("snapshot {}", peers.len()),
        WatchEvent::LocalUpdated(r) => format!("local {:?}", r.view.public),
        WatchEvent::PeerUpserted(p) => {
            format!("upsert {} {:?} {:?}", p.node_id, p.view.public, p.state)
        }
        WatchEvent::PeerRemoved(id) => format!("removed {id}"),
        WatchEvent::PolicyChanged(p) => format!("policy {p:?}"),
        WatchEvent::Suspend(d) => format!("suspend {d}"),
    }
}
