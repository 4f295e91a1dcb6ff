//! The IO loop around the sans-IO [`Node`]: the one place its inputs go in and its outputs
//! are performed.
//!
//! Two callers share the Node, one at a time: the control loop (Watch events, our own record,
//! path MTU inputs, punches) and the Node's own task ([`NodeIo::run`]: what the packet threads
//! hand over, WireGuard and path MTU timers, the relay paths' tick). Each call runs on the
//! Node and then drains everything it asked for ([`NodeIo::with`]), so commands reach the
//! engines in the order the Node emitted them whoever called. The control loop waits on the
//! controller without holding the Node: handshakes, timers and keepalives go on while the
//! controller is slow or gone.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use cladnet_core::node::{Command, Event, Node};
use tokio::{
    sync::{Mutex, mpsc},
    time::{Instant, MissedTickBehavior, interval},
};
use tracing::{debug, info, warn};

use super::{dataplane::Dataplane, pmtu};
use crate::{
    engine::{
        counters::Drop,
        userspace::{ForNode, Userspace},
    },
    netconf,
};

/// How often the Node's task looks at what the packet threads asked of WireGuard (a rekey,
/// a confirmed session, a roamed peer: they mark it in the peer's data side) and runs the
/// relay paths' tick. WireGuard's timers have second granularity.
const TICK: Duration = Duration::from_millis(50);

/// Inputs taken from the packet threads per drain of the Node's outputs (bounds the time
/// the control loop waits for the Node under a flood of handshake messages).
const INPUT_BATCH: usize = 64;

/// The Node and what performs its outputs.
pub(super) struct NodeIo {
    node: Mutex<Node>,
    /// The overlay device (netconf commands).
    interface: String,
    dp: Arc<Dataplane>,
    engine: Arc<Userspace>,
}

impl NodeIo {
    pub(super) fn new(
        node: Node,
        interface: String,
        dp: Arc<Dataplane>,
        engine: Arc<Userspace>,
    ) -> Self {
        Self {
            node: Mutex::new(node),
            interface,
            dp,
            engine,
        }
    }

    /// Runs `f` on the Node with the current time, then performs what it asked for.
    pub(super) async fn with<R>(
        &self,
        f: impl FnOnce(&mut Node, std::time::Instant) -> R,
    ) -> anyhow::Result<R> {
        let mut node = self.node.lock().await;
        let r = f(&mut node, std::time::Instant::now());
        self.drive(&mut node).await?;
        Ok(r)
    }

    /// The Node's task: what the packet threads hand over and the Node's timers, until the
    /// engine stops. A failure to perform a command (netconf) is logged, never fatal here:
    /// the next command or Watch snapshot tries again.
    pub(super) async fn run(self: Arc<Self>, mut inputs: mpsc::Receiver<ForNode>) {
        let mut tick = interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(INPUT_BATCH);
        loop {
            let next = self.node.lock().await.poll_timeout();
            let result = tokio::select! {
                n = inputs.recv_many(&mut batch, INPUT_BATCH) => {
                    if n == 0 {
                        return;
                    }
                    self.with(|node, now| {
                        for input in batch.drain(..) {
                            if let Err(dropped) = handle(node, now, input) {
                                self.dp.router.drops().add(Drop::from_node(dropped));
                            }
                        }
                    })
                    .await
                }
                () = sleep_until_opt(next.map(Instant::from_std)) => {
                    self.with(|node, now| node.handle_timeout(now)).await
                }
                _ = tick.tick() => {
                    self.with(|node, now| {
                        self.dp.router.relay().tick(now, node);
                        if node.poll_timeout().is_some_and(|at| at <= now) {
                            node.handle_timeout(now);
                        }
                    })
                    .await
                }
            };
            if let Err(error) = result {
                warn!(
                    error = format!("{error:#}"),
                    "performing the Node's commands failed"
                );
            }
        }
    }

    /// Performs what the Node asks for: commands to the engines (and netconf, the one place
    /// the overlay device is configured), datagrams, packets for the TUN device, events.
    async fn drive(&self, node: &mut Node) -> anyhow::Result<()> {
        let now = std::time::Instant::now();
        while let Some(cmd) = node.poll_command() {
            if let Command::SetLocal(local) = &cmd {
                let (ip, prefix_len, mtu) = (local.overlay_ip, local.prefix_len, local.mtu);
                netconf::configure_interface(&self.interface, ip, prefix_len, mtu)
                    .await
                    .with_context(|| {
                        format!(
                            "configuring {} with {ip}/{prefix_len} mtu {mtu}",
                            self.interface
                        )
                    })?;
                info!(interface = self.interface, %ip, prefix_len, mtu, "overlay interface up");
            }
            pmtu::apply_route(&self.interface, &cmd).await;
            self.dp.apply(now, &cmd);
            let route_mtu = match &cmd {
                Command::UpsertPeer(p) => node.path_mtu(&p.node_id).and_then(|s| s.route_mtu),
                _ => None,
            };
            crate::routes::kernel_routes(&self.interface, &cmd, route_mtu).await;
            // A peer's prefixes follow its route MTU.
            if let Command::SetRouteMtu { node_id, mtu, .. } = &cmd
                && let Some(p) = node.forwarding().peer(node_id)
                && !p.prefixes.is_empty()
            {
                let prefixes = p.prefixes.clone();
                crate::routes::prefix_routes(&self.interface, node_id, &prefixes, *mtu).await;
            }
        }
        while let Some(t) = node.poll_transmit() {
            match self.engine.send(&t.payload, t.to) {
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    node.handle_transmit_too_big(now, t.to, t.payload.len());
                }
                // Unreachable peers and full buffers are routine on an overlay.
                Err(error) => debug!(to = %t.to, %error, "send failed"),
                Ok(()) => {}
            }
        }
        while let Some(packet) = node.poll_tun_packet() {
            self.engine.write_tun(&packet);
        }
        while let Some(event) = node.poll_event() {
            self.on_event(node, event);
        }
        Ok(())
    }

    fn on_event(&self, node: &Node, event: Event) {
        match event {
            Event::EndpointLearned { node_id, endpoint } => {
                info!(node_id, %endpoint, "PLAIN peer seen on another port of its address; following it");
            }
            // The engine's socket thread answers its own reflector probes.
            Event::Reflected { .. } => {}
            Event::PathMtu { node_id, status } => self.dp.set_path_mtu(node_id, status),
            Event::HandshakeCompleted { node_id } => debug!(node_id, "handshake completed"),
            Event::HandshakeTimedOut { node_id } => warn!(node_id, "handshake timed out"),
            // A relay address: the path module logs the move to a relay.
            Event::EndpointChanged {
                node_id, endpoint, ..
            } if cladnet_core::relay::relay_node(endpoint).is_some() => {
                debug!(node_id, %endpoint, "peer reached through a relay");
            }
            Event::EndpointChanged {
                node_id,
                endpoint,
                roamed,
            } => {
                if roamed {
                    info!(node_id, %endpoint, "peer roamed to a new endpoint");
                    // A relayed peer's direct message: the path's evidence, which the next
                    // relayed message would hide from the paths' tick.
                    if let Some(p) = node.forwarding().peer(&node_id) {
                        self.dp.router.relay().direct_seen(p.node_index, endpoint);
                    }
                } else {
                    debug!(node_id, %endpoint, "peer sent to its direct endpoint again");
                }
            }
        }
    }
}

/// Hands one input from the packet threads to the Node.
fn handle(
    node: &mut Node,
    now: std::time::Instant,
    input: ForNode,
) -> Result<(), cladnet_core::node::Dropped> {
    match input {
        ForNode::Datagram { from, datagram } => node.handle_datagram(now, from, &datagram),
        ForNode::Initiation { from, initiation } => node.handle_initiation(now, from, initiation),
        ForNode::Packet(packet) => node.handle_tun_packet(now, &packet),
    }
}

/// Sleeps until `at`, or forever.
pub(super) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
