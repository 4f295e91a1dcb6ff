//! Error kinds. They carry no key material and no packet contents, so they are safe to log.

/// Why an operation on a packet failed. The packet is dropped; the session state is unchanged
/// unless the variant says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller's output buffer cannot hold the result.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The datagram is not a well-formed WireGuard message (unknown type, non-zero reserved
    /// bytes, or wrong length).
    #[error("malformed WireGuard message")]
    MalformedMessage,
    /// The handshake message's mac1 does not match our static public key.
    #[error("invalid mac1")]
    InvalidMac,
    /// No handshake or keypair of ours uses the message's receiver index.
    #[error("unknown receiver index")]
    UnknownReceiverIndex,
    /// A valid initiation came from a static key that is not in the table of allowed peers.
    #[error("initiation from a static key that is not a configured peer")]
    UnknownPeer,
    /// A handshake message failed to decrypt or authenticate (or carried a weak public key).
    #[error("handshake message failed to authenticate")]
    HandshakeFailed,
    /// The initiation's TAI64N timestamp is not newer than the last accepted one from that peer.
    #[error("initiation timestamp is not newer than the last accepted one")]
    TimestampReplay,
    /// Initiations from this peer arrive faster than `INITIATIONS_PER_SECOND`.
    #[error("initiations from this peer arrive too fast")]
    InitiationFlood,
    /// Under load, a handshake message with a valid cookie came from a source address that
    /// already sent more than its share (20 per second, bursts of 5).
    #[error("handshake messages from this source arrive too fast while under load")]
    RateLimited,
    /// Under load, a handshake message without a valid mac2 got no cookie reply: its source
    /// address (20 per second, bursts of 5) or all sources together (2000 per second) already
    /// got their share of cookie replies.
    #[error("cookie replies to this source (or to all sources) are going out too fast")]
    CookieRateLimited,
    /// A cookie reply did not decrypt or was not expected.
    #[error("invalid or unexpected cookie reply")]
    InvalidCookieReply,
    /// A transport message failed authentication.
    #[error("transport message failed to decrypt")]
    DecryptionFailed,
    /// The transport counter was already seen, is too old for the replay window, or is beyond
    /// `REJECT_AFTER_MESSAGES`.
    #[error("replayed or out-of-window counter")]
    Replay,
    /// The keypair is older than `REJECT_AFTER_TIME` or its counter is exhausted.
    #[error("keypair expired")]
    KeypairExpired,
    /// The decrypted payload is not an IPv4 or IPv6 packet whose length fits the payload, or the
    /// caller tried to encapsulate an empty packet.
    #[error("invalid inner IP packet")]
    InvalidInnerPacket,
    /// No session can send to the peer, or packets already wait for one: returned by
    /// [`crate::PeerData::encapsulate`] only; pass the packet to [`crate::Device::encapsulate`],
    /// which queues it and starts a handshake.
    #[error("no session to send on; the device must queue the packet")]
    NoSession,
    /// The peer has no known endpoint, so nothing can be sent to it yet.
    #[error("peer has no known endpoint")]
    NoEndpoint,
    /// The peer id does not name a peer of this device.
    #[error("no such peer")]
    NoSuchPeer,
}

/// Why a peer could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The peer's public key is our own.
    #[error("peer public key is the device's own key")]
    PeerIsSelf,
    /// A peer with this public key is already configured.
    #[error("a peer with this public key already exists")]
    DuplicatePeer,
    /// The public key is a low-order point: Diffie-Hellman with it yields all zeros.
    #[error("invalid (low-order) public key")]
    InvalidPublicKey,
    /// The device already holds the maximum number of peers (2^24).
    #[error("too many peers")]
    TooManyPeers,
}
