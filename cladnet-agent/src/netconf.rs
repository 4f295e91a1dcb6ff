//! Interface, address and route configuration over rtnetlink, plus the host facts the agent
//! reads from the kernel (IPv4 interfaces, the route towards an address) and a subscription to
//! address changes.
//!
//! Every function opens its own short-lived netlink socket in the calling thread's network
//! namespace and needs a Tokio runtime (the socket's I/O runs as a spawned task).

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr},
    pin::Pin,
    task::{Context, Poll},
};

use futures::{Stream, StreamExt as _, TryStreamExt as _, channel::mpsc::UnboundedReceiver};
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle, LinkUnspec, MulticastGroup, RouteMessageBuilder,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage},
        link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        route::{
            RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
            RouteType,
        },
    },
    sys::SocketAddr,
};
use tokio::task::JoinHandle;

use crate::sys::{SysError, tun::validate_interface_name};

/// Smallest MTU IPv4 allows (RFC 791).
pub const MIN_MTU: u32 = 68;
/// Largest MTU a TUN device accepts.
pub const MAX_MTU: u32 = 65535;

/// A netlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetconfError {
    /// The netlink socket could not be opened.
    #[error("opening a netlink route socket: {source}")]
    Connect {
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An argument was rejected before reaching the kernel.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidInput {
        /// Which input.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The interface does not exist.
    #[error("interface {interface:?} does not exist")]
    NoSuchInterface {
        /// The interface.
        interface: String,
    },
    /// The kernel refused an operation.
    #[error("{operation} on interface {interface:?} ({value}): {source}")]
    Netlink {
        /// What was attempted (e.g. `set mtu`).
        operation: &'static str,
        /// On which interface (empty for lookups not tied to one).
        interface: String,
        /// With which value (e.g. `1380`, `10.0.0.0/24`).
        value: String,
        /// The kernel's answer (boxed: it can carry a whole netlink message).
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

impl NetconfError {
    /// The OS error number the kernel answered with, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Connect { source } => source.raw_os_error(),
            Self::Netlink { source, .. } => errno(source),
            Self::InvalidInput { .. } | Self::NoSuchInterface { .. } => None,
        }
    }
}

/// The positive errno of a netlink error answer.
fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

fn invalid(field: &'static str, value: impl ToString, reason: impl Into<String>) -> NetconfError {
    NetconfError::InvalidInput {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn netlink_err(
    operation: &'static str,
    interface: &str,
    value: impl ToString,
) -> impl FnOnce(rtnetlink::Error) -> NetconfError {
    let interface = interface.to_owned();
    let value = value.to_string();
    move |source| NetconfError::Netlink {
        operation,
        interface,
        value,
        source: Box::new(source),
    }
}

/// Opens a netlink socket; its I/O task ends when the returned handle is dropped.
fn connect() -> Result<Handle, NetconfError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetconfError::Connect { source })?;
    tokio::spawn(connection);
    Ok(handle)
}

fn check_name(name: &str) -> Result<(), NetconfError> {
    validate_interface_name(name).map_err(|e| match e {
        SysError::InvalidInput {
            field,
            value,
            reason,
        } => NetconfError::InvalidInput {
            field,
            value,
            reason,
        },
        other => unreachable!("name validation makes no syscall: {other}"),
    })
}

async fn link_by_name(handle: &Handle, name: &str) -> Result<LinkMessage, NetconfError> {
    check_name(name)?;
    match handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
    {
        Ok(Some(link)) => Ok(link),
        Ok(None) => Err(NetconfError::NoSuchInterface {
            interface: name.to_owned(),
        }),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Err(NetconfError::NoSuchInterface {
            interface: name.to_owned(),
        }),
        Err(e) => Err(netlink_err("look up interface", name, "by name")(e)),
    }
}

async fn link_by_index(handle: &Handle, index: u32) -> Result<Option<LinkMessage>, NetconfError> {
    match handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(netlink_err(
            "look up interface",
            "",
            format!("index {index}"),
        )(e)),
    }
}

/// The kind of interface `name` (`veth`, `bridge`, `tun`, ...; `None` for a physical or
/// paravirtual NIC, which has no kind).
pub async fn link_kind(name: &str) -> Result<Option<String>, NetconfError> {
    let handle = connect()?;
    let link = link_by_name(&handle, name).await?;
    Ok(link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind.to_string()),
            _ => None,
        }),
        _ => None,
    }))
}

fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// The IPv4 address and prefix of an address message (`IFA_LOCAL`, which is the interface's
/// own address also on point-to-point links), `None` for other families.
fn ipv4_cidr(msg: &AddressMessage) -> Option<Ipv4Net> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(ip)) => address = Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) if address.is_none() => {
                address = Some(*ip);
            }
            _ => {}
        }
    }
    Ipv4Net::new(address?, msg.header.prefix_len).ok()
}

/// Configures an interface for the overlay: sets its MTU, makes `ip/prefix_len` its only IPv4
/// address and brings it up. The kernel then adds the connected route to the prefix.
///
/// Idempotent: re-running with the same values changes nothing (and so notifies no
/// [`address_changes`] subscriber); with another address it replaces the old one.
pub async fn configure_interface(
    name: &str,
    ip: Ipv4Addr,
    prefix_len: u8,
    mtu: u32,
) -> Result<(), NetconfError> {
    let wanted = Ipv4Net::new(ip, prefix_len)
        .map_err(|_| invalid("prefix length", prefix_len, "must be 0..=32"))?;
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(invalid(
            "mtu",
            mtu,
            format!("must be {MIN_MTU}..={MAX_MTU}"),
        ));
    }
    let handle = connect()?;
    let link = link_by_name(&handle, name).await?;
    let index = link.header.index;

    if link_mtu(&link) != Some(mtu) {
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(netlink_err("set mtu", name, mtu))?;
    }

    let addresses: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink_err("list addresses", name, "ipv4"))?;
    let mut present = false;
    for msg in addresses {
        let Some(cidr) = ipv4_cidr(&msg) else {
            continue;
        };
        if cidr == wanted {
            present = true;
            continue;
        }
        handle
            .address()
            .del(msg)
            .execute()
            .await
            .or_else(|e| match errno(&e) {
                // Already gone, e.g. removed with the primary it was secondary to.
                Some(libc::EADDRNOTAVAIL) => Ok(()),
                _ => Err(e),
            })
            .map_err(netlink_err("remove stale address", name, cidr))?;
    }
    if !present {
        handle
            .address()
            .add(index, IpAddr::V4(ip), prefix_len)
            .replace()
            .execute()
            .await
            .map_err(netlink_err("add address", name, wanted))?;
    }

    if !link.header.flags.contains(LinkFlags::Up) {
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink_err("set link up", name, "up"))?;
    }
    Ok(())
}

/// Adds or replaces the main-table route to `dest` through device `dev` (scope link, no
/// gateway: the overlay device takes the packets itself), with an MTU metric if `mtu` is set.
/// Host bits of `dest` are ignored. Replacing without `mtu` drops a previous MTU metric.
pub async fn replace_route(dest: Ipv4Net, dev: &str, mtu: Option<u32>) -> Result<(), NetconfError> {
    let dest = dest.trunc();
    if let Some(mtu) = mtu
        && !(MIN_MTU..=MAX_MTU).contains(&mtu)
    {
        return Err(invalid(
            "route mtu",
            mtu,
            format!("must be {MIN_MTU}..={MAX_MTU}"),
        ));
    }
    let handle = connect()?;
    let index = link_by_name(&handle, dev).await?.header.index;
    let mut msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dest.network(), dest.prefix_len())
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    if let Some(mtu) = mtu {
        msg.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    let value = match mtu {
        Some(mtu) => format!("{dest} mtu {mtu}"),
        None => dest.to_string(),
    };
    handle
        .route()
        .add(msg)
        .replace()
        .execute()
        .await
        .map_err(netlink_err("replace route", dev, value))
}

/// Deletes the main-table route to `dest` through `dev`. A missing route or device is not an
/// error (the routes of a deleted device are gone with it).
pub async fn delete_route(dest: Ipv4Net, dev: &str) -> Result<(), NetconfError> {
    let dest = dest.trunc();
    let handle = connect()?;
    let index = match link_by_name(&handle, dev).await {
        Ok(link) => link.header.index,
        Err(NetconfError::NoSuchInterface { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut msg: RouteMessage = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dest.network(), dest.prefix_len())
        .output_interface(index)
        .build();
    // Wildcards, so the kernel matches the route whoever added it and whatever its scope.
    msg.header.protocol = RouteProtocol::Unspec;
    msg.header.scope = RouteScope::NoWhere;
    msg.header.kind = RouteType::Unspec;
    match handle.route().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(netlink_err("delete route", dev, dest)(e)),
    }
}

/// A non-loopback interface with IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Its IPv4 addresses with their prefix lengths.
    pub cidrs: Vec<(Ipv4Addr, u8)>,
    /// Its MTU.
    pub mtu: u32,
    /// Administratively up and running (carrier present).
    pub up: bool,
}

/// The host's non-loopback interfaces that have at least one IPv4 address, by index.
pub async fn ipv4_interfaces() -> Result<Vec<InterfaceInfo>, NetconfError> {
    let handle = connect()?;
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink_err("list interfaces", "", "all"))?;
    let addresses: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink_err("list addresses", "", "all"))?;
    let mut cidrs: BTreeMap<u32, Vec<(Ipv4Addr, u8)>> = BTreeMap::new();
    for msg in &addresses {
        if let Some(cidr) = ipv4_cidr(msg) {
            cidrs
                .entry(msg.header.index)
                .or_default()
                .push((cidr.addr(), cidr.prefix_len()));
        }
    }
    let mut out: Vec<InterfaceInfo> = links
        .iter()
        .filter(|link| !link.header.flags.contains(LinkFlags::Loopback))
        .filter_map(|link| {
            let cidrs = cidrs.remove(&link.header.index)?;
            let flags = link.header.flags;
            Some(InterfaceInfo {
                name: link_name(link)?.to_owned(),
                index: link.header.index,
                cidrs,
                mtu: link_mtu(link).unwrap_or(0),
                up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
            })
        })
        .collect();
    out.sort_by_key(|i| i.index);
    Ok(out)
}

/// Where the kernel would send a packet to some address (`ip route get`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLookup {
    /// Outgoing interface (`lo` for the host's own addresses).
    pub interface: String,
    /// Its index.
    pub index: u32,
    /// Path MTU: the route's MTU metric (or learned PMTU) if any, else the interface MTU.
    pub mtu: u32,
    /// Source address the kernel would pick.
    pub source: Option<Ipv4Addr>,
    /// Next hop, if not directly connected.
    pub gateway: Option<Ipv4Addr>,
}

/// Asks the kernel which interface, MTU and source address it would use to reach `dest`
/// (RTM_GETROUTE); `None` if `dest` is unreachable.
pub async fn route_interface(dest: Ipv4Addr) -> Result<Option<RouteLookup>, NetconfError> {
    let handle = connect()?;
    let query = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dest, 32)
        .build();
    let route = match handle.route().get(query).execute().try_next().await {
        Ok(Some(route)) => route,
        Ok(None) => return Ok(None),
        Err(e)
            if matches!(
                errno(&e),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL)
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(netlink_err("route lookup", "", dest)(e)),
    };
    let (mut oif, mut source, mut gateway, mut route_mtu) = (None, None, None, None);
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => source = Some(*ip),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Metrics(metrics) => {
                route_mtu = metrics.iter().find_map(|m| match m {
                    RouteMetric::Mtu(mtu) if *mtu > 0 => Some(*mtu),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    let Some(index) = oif else {
        return Ok(None);
    };
    // The interface can vanish between the two requests; then the route is gone too.
    let Some(link) = link_by_index(&handle, index).await? else {
        return Ok(None);
    };
    let link_mtu = link_mtu(&link).unwrap_or(0);
    Ok(Some(RouteLookup {
        interface: link_name(&link).unwrap_or_default().to_owned(),
        index,
        mtu: route_mtu.unwrap_or(link_mtu),
        source,
        gateway,
    }))
}

/// Deletes interface `name`; a missing interface is not an error.
pub async fn delete_link(name: &str) -> Result<(), NetconfError> {
    let handle = connect()?;
    let index = match link_by_name(&handle, name).await {
        Ok(link) => link.header.index,
        Err(NetconfError::NoSuchInterface { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(netlink_err("delete link", name, index)(e)),
    }
}

type Notifications = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// A subscription to IPv4 address and link changes; see [`address_changes`].
///
/// A [`Stream`] of `()`: one item per burst of changes (notifications already queued are
/// merged into one item), so the consumer re-reads what it needs. It ends only if the netlink
/// socket fails; the consumer should then re-subscribe and re-read.
#[derive(Debug)]
pub struct AddressChanges {
    notifications: Notifications,
    connection: JoinHandle<()>,
}

/// Subscribes to the kernel's IPv4 address (RTNLGRP_IPV4_IFADDR) and link (RTNLGRP_LINK)
/// notifications of the calling thread's network namespace. Changes made after this returns
/// are seen. Must be called within a Tokio runtime.
pub fn address_changes() -> Result<AddressChanges, NetconfError> {
    let (connection, _handle, notifications) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Ipv4Ifaddr, MulticastGroup::Link])
            .map_err(|source| NetconfError::Connect { source })?;
    Ok(AddressChanges {
        notifications,
        connection: tokio::spawn(connection),
    })
}

impl AddressChanges {
    /// Waits for the next change; `None` once the subscription has ended. Cancel-safe (usable
    /// in `tokio::select!`).
    pub async fn recv(&mut self) -> Option<()> {
        self.next().await
    }
}

fn is_address_or_link_change(msg: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
    match &msg.payload {
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewAddress(addr) | RouteNetlinkMessage::DelAddress(addr),
        ) => addr.header.family == AddressFamily::Inet,
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_),
        ) => true,
        _ => false,
    }
}

impl Stream for AddressChanges {
    type Item = ();

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let mut changed = false;
        loop {
            match self.notifications.poll_next_unpin(cx) {
                Poll::Ready(Some((msg, _))) => changed |= is_address_or_link_change(&msg),
                Poll::Ready(None) => return Poll::Ready(changed.then_some(())),
                Poll::Pending => {
                    return if changed {
                        Poll::Ready(Some(()))
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    }
}

impl Drop for AddressChanges {
    fn drop(&mut self) {
        // The connection task would otherwise keep the socket (and its subscription) open.
        self.connection.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn invalid_input_is_rejected_before_netlink() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let err = configure_interface("cln0", ip, 33, 1400).await.unwrap_err();
        assert!(
            err.to_string().contains("invalid prefix length \"33\""),
            "{err}"
        );
        let err = configure_interface("cln0", ip, 24, 67).await.unwrap_err();
        assert!(err.to_string().contains("invalid mtu \"67\""), "{err}");
        let err = configure_interface("bad name", ip, 24, 1400)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                NetconfError::InvalidInput {
                    field: "interface",
                    ..
                }
            ),
            "{err}"
        );
        let dest: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let err = replace_route(dest, "cln0", Some(70_000)).await.unwrap_err();
        assert!(err.to_string().contains("invalid route mtu"), "{err}");
        let err = delete_route(dest, "a/b").await.unwrap_err();
        assert!(err.to_string().contains("invalid interface"), "{err}");
    }

    #[test]
    fn ipv4_cidr_prefers_local() {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = 24;
        msg.attributes = vec![
            AddressAttribute::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
            AddressAttribute::Local(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
        ];
        assert_eq!(ipv4_cidr(&msg), Some("10.0.0.1/24".parse().unwrap()));
        msg.header.family = AddressFamily::Inet6;
        assert_eq!(ipv4_cidr(&msg), None);
    }
}
