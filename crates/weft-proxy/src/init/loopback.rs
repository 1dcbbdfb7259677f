//! The IPv6 forward source on the loopback interface: `weft-proxy init` adds
//! [`APP_FORWARD_SOURCE_V6`] (`::6/128`) to `lo` so that the inbound side's connections to the
//! application over IPv6 have a source address of their own, which the nat rules let through
//! (IPv4 has 127.0.0.0/8 on `lo` already; IPv6 has only `::1`, which applications trust as
//! their own host). One rtnetlink request, written here by hand: the message is 64 bytes, and
//! it spares the init container iproute2.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::{APP_FORWARD_SOURCE_V6, InitError};

/// `lo` is interface 1 in every network namespace (the kernel's `LOOPBACK_IFINDEX`).
const LOOPBACK_INDEX: u32 = 1;
const AF_NETLINK: i32 = 16;
const NETLINK_ROUTE: i32 = 0;
const AF_INET6: u8 = 10;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// No duplicate address detection: the address is usable at once.
const IFA_F_NODAD: u8 = 0x02;
const EPERM: i32 = 1;
const EADDRNOTAVAIL: i32 = 99;

/// What `init` does with the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Adds it, or leaves it as it is.
    Add,
    /// Removes it, if it is there.
    Remove,
}

/// The rtnetlink request for `change`, with sequence number `seq`.
fn request(change: Change, seq: u32) -> Vec<u8> {
    let (kind, flags) = match change {
        Change::Add => (
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        ),
        Change::Remove => (RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK),
    };
    let addr = APP_FORWARD_SOURCE_V6.octets();
    let mut body = Vec::with_capacity(48);
    // struct ifaddrmsg: family, prefix length, flags, scope, interface index.
    body.extend_from_slice(&[AF_INET6, 128, IFA_F_NODAD, 0]);
    body.extend_from_slice(&LOOPBACK_INDEX.to_ne_bytes());
    for attr in [IFA_LOCAL, IFA_ADDRESS] {
        // struct rtattr (length, type), then the address; 20 bytes, already aligned to 4.
        body.extend_from_slice(&20u16.to_ne_bytes());
        body.extend_from_slice(&attr.to_ne_bytes());
        body.extend_from_slice(&addr);
    }
    let len = u32::try_from(16 + body.len()).unwrap_or(u32::MAX);
    let mut msg = Vec::with_capacity(16 + body.len());
    // struct nlmsghdr: length, type, flags, sequence, port (0: the kernel assigns).
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// The errno of the kernel's acknowledgement of request `seq` (0 for success), or `None`
/// when `reply` is not one.
fn ack_errno(reply: &[u8], seq: u32) -> Option<i32> {
    let u16_at = |i: usize| {
        reply
            .get(i..i + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let u32_at = |i: usize| {
        reply
            .get(i..i + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u16_at(4)? != NLMSG_ERROR {
        return None;
    }
    // struct nlmsgerr: the (negative) error, then the request's header, whose sequence
    // number is at 16 + 4 + 8.
    let error = i32::from_ne_bytes(u32_at(16)?.to_ne_bytes());
    (u32_at(28)? == seq).then_some(-error)
}

/// What the command would be in a shell, for `--dry-run`.
pub fn as_shell(change: Change) -> String {
    match change {
        Change::Add => format!("ip -6 addr replace {APP_FORWARD_SOURCE_V6}/128 dev lo nodad"),
        Change::Remove => {
            format!("ip -6 addr del {APP_FORWARD_SOURCE_V6}/128 dev lo 2>/dev/null || true")
        }
    }
}

/// Adds or removes the address in this process's network namespace.
pub fn apply(change: Change) -> Result<(), InitError> {
    let command = as_shell(change);
    let io_err = |source: std::io::Error| InitError::Spawn {
        command: command.clone(),
        source,
    };
    let mut socket = Socket::new(
        Domain::from(AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(NETLINK_ROUTE)),
    )
    .map_err(io_err)?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err)?;
    let seq = 1;
    socket.write_all(&request(change, seq)).map_err(io_err)?;
    let mut reply = [0u8; 1024];
    // The kernel answers each request with one acknowledgement; bounded all the same.
    for _ in 0..16 {
        let n = socket.read(&mut reply).map_err(io_err)?;
        let Some(errno) = ack_errno(&reply[..n], seq) else {
            continue;
        };
        return match (errno, change) {
            (0, _) | (EADDRNOTAVAIL, Change::Remove) => Ok(()),
            (EPERM, _) => Err(InitError::NotPermitted {
                command,
                detail: "operation not permitted".into(),
            }),
            (errno, _) => Err(InitError::Failed {
                command,
                status: format!("errno {errno}"),
                detail: std::io::Error::from_raw_os_error(errno).to_string(),
            }),
        };
    }
    Err(InitError::Failed {
        command,
        status: "no acknowledgement".into(),
        detail: "the kernel did not answer the request".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request has the layout rtnetlink reads: a 16-byte header whose length counts the
    /// whole message, an 8-byte ifaddrmsg for a /128 on lo, and two 20-byte address attributes.
    #[test]
    fn the_request_is_laid_out_as_rtnetlink_reads_it() {
        let msg = request(Change::Add, 7);
        assert_eq!(msg.len(), 64);
        assert_eq!(u32::from_ne_bytes(msg[0..4].try_into().unwrap()), 64);
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), RTM_NEWADDR);
        assert_eq!(u16::from_ne_bytes([msg[6], msg[7]]), 0x505);
        assert_eq!(u32::from_ne_bytes(msg[8..12].try_into().unwrap()), 7);
        assert_eq!(&msg[16..20], &[AF_INET6, 128, IFA_F_NODAD, 0]);
        assert_eq!(u32::from_ne_bytes(msg[20..24].try_into().unwrap()), 1);
        assert_eq!(u16::from_ne_bytes([msg[24], msg[25]]), 20);
        assert_eq!(u16::from_ne_bytes([msg[26], msg[27]]), IFA_LOCAL);
        assert_eq!(&msg[28..44], &APP_FORWARD_SOURCE_V6.octets());
        assert_eq!(u16::from_ne_bytes([msg[46], msg[47]]), IFA_ADDRESS);
        let del = request(Change::Remove, 7);
        assert_eq!(u16::from_ne_bytes([del[4], del[5]]), RTM_DELADDR);
        assert_eq!(
            u16::from_ne_bytes([del[6], del[7]]),
            NLM_F_REQUEST | NLM_F_ACK
        );
    }

    /// Acknowledgements are read by sequence number; anything else is skipped, and a short
    /// message never panics.
    #[test]
    fn acknowledgements_are_matched_to_their_request() {
        let ack = |seq: u32, error: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&0u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&error.to_ne_bytes());
            m.extend_from_slice(&request(Change::Add, seq)[..16]);
            m
        };
        assert_eq!(ack_errno(&ack(1, 0), 1), Some(0));
        assert_eq!(ack_errno(&ack(1, -EPERM), 1), Some(EPERM));
        assert_eq!(ack_errno(&ack(2, 0), 1), None);
        let mut other = ack(1, 0);
        other[4] = 3;
        assert_eq!(ack_errno(&other, 1), None);
        for n in 0..32 {
            assert_eq!(ack_errno(&ack(1, 0)[..n], 1), None);
        }
    }
}
