//! What the agent reports about its host: interfaces, the private underlay address it uses,
//! the underlay MTU.

use std::net::{Ipv4Addr, SocketAddr};

use cladnet_proto::v1 as pb;

use crate::netconf;

/// A global unicast address (TEST-NET-1) to look up the default route with.
const ANY_GLOBAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// Host facts gathered at start and on address changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// Host name.
    pub host_name: String,
    /// IPv4 interfaces (not loopback, not the overlay).
    pub interfaces: Vec<pb::NetworkInterface>,
    /// The address (with prefix) the route towards the controller leaves from.
    pub private_cidr: Option<(Ipv4Addr, u8)>,
    /// MTU of that route.
    pub underlay_mtu: u32,
    /// The interface that route leaves by (where the eBPF receive program attaches).
    pub underlay_iface: Option<String>,
}

impl HostFacts {
    /// Reads the host's interfaces and the route towards `controller`, skipping `overlay`.
    pub async fn gather(
        controller: SocketAddr,
        overlay: &str,
        host_name: Option<&str>,
        mtu_override: Option<u32>,
    ) -> Result<Self, netconf::NetconfError> {
        let all = netconf::ipv4_interfaces().await?;
        let interfaces: Vec<pb::NetworkInterface> = all
            .iter()
            .filter(|i| i.name != overlay)
            .map(|i| pb::NetworkInterface {
                name: i.name.clone(),
                ipv4_cidrs: i.cidrs.iter().map(|(a, l)| format!("{a}/{l}")).collect(),
                mtu: i.mtu,
            })
            .collect();
        let mut towards = match controller {
            SocketAddr::V4(v4) => netconf::route_interface(*v4.ip()).await?,
            SocketAddr::V6(_) => None,
        };
        // A controller on this very host is reached over loopback, whose MTU says nothing
        // about the underlay: ask where traffic to the rest of the world would go instead (a
        // route lookup, nothing is sent).
        if towards.as_ref().is_none_or(|r| r.interface == "lo") {
            towards = netconf::route_interface(ANY_GLOBAL).await?;
        }
        let (private_cidr, route_mtu) = match &towards {
            Some(route) => {
                let iface = all.iter().find(|i| i.name == route.interface);
                let cidr = iface.and_then(|i| {
                    i.cidrs
                        .iter()
                        .find(|(a, _)| Some(*a) == route.source)
                        .or_else(|| i.cidrs.first())
                        .copied()
                });
                (cidr, Some(route.mtu))
            }
            // No route out at all (an isolated test bed): the first interface that is up.
            None => all
                .iter()
                .find(|i| i.up && i.name != overlay)
                .map_or((None, None), |i| (i.cidrs.first().copied(), Some(i.mtu))),
        };
        let underlay_iface = towards.as_ref().map(|r| r.interface.clone()).or_else(|| {
            all.iter()
                .find(|i| i.up && i.name != overlay)
                .map(|i| i.name.clone())
        });
        Ok(Self {
            underlay_iface,
            host_name: host_name.map_or_else(system_host_name, str::to_owned),
            interfaces,
            private_cidr,
            underlay_mtu: mtu_override.or(route_mtu).unwrap_or(1500),
        })
    }

    /// The proto form.
    pub fn to_proto(&self, capabilities: &[&str]) -> pb::HostFacts {
        pb::HostFacts {
            host_name: self.host_name.clone(),
            interfaces: self.interfaces.clone(),
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        }
    }
}

fn system_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
