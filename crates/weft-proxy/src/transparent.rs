//! Transparent interception: the address a connection was meant for before the nat table's
//! REDIRECT rules (written by `weft-proxy init`) sent it to one of the proxy's listeners.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Why a connection has no usable original destination.
#[derive(Debug, thiserror::Error)]
pub enum NoOriginalDst {
    /// The kernel keeps no NAT record for it: it was not redirected.
    #[error("no original destination: {0}")]
    Lookup(std::io::Error),
    /// It was addressed to the listener itself, not redirected to it: serving it would loop
    /// back into the proxy.
    #[error("addressed to the proxy's own listener {0}, not redirected to it")]
    Direct(SocketAddr),
}

/// The original destination of a redirected connection (`SO_ORIGINAL_DST`, or
/// `IP6T_SO_ORIGINAL_DST` for IPv6).
pub fn original_dst(tcp: &TcpStream) -> Result<SocketAddr, NoOriginalDst> {
    let local = tcp.local_addr().map_err(NoOriginalDst::Lookup)?;
    let sock = socket2::SockRef::from(tcp);
    let original = if local.is_ipv6() {
        sock.original_dst_v6()
    } else {
        sock.original_dst_v4()
    }
    .map_err(NoOriginalDst::Lookup)?;
    let original = original
        .as_socket()
        .ok_or_else(|| NoOriginalDst::Lookup(std::io::Error::other("not an IP address")))?;
    // Without a redirect, conntrack still answers, with the address the client dialed: ours.
    if original == local {
        return Err(NoOriginalDst::Direct(local));
    }
    Ok(original)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that no rule redirected has no original destination to serve.
    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        assert!(original_dst(&server).is_err());
    }
}
