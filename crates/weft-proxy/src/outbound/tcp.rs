//! Opaque TCP outbound: the connection is spliced to an endpoint of its destination, over
//! mutual TLS when the endpoint is meshed. A failed connection attempt is tried again on a
//! fresh pick of the balancer, a few times.

use super::destination::Destination;
use super::gate::unroutable;

/// A connection attempt that fails this many times in a row (each on a fresh pick) fails the
/// TCP connection.
const TCP_CONNECT_ATTEMPTS: usize = 3;

/// Forwards an opaque TCP connection, over mutual TLS when the endpoint is meshed.
pub async fn forward_tcp<I>(mut io: I, dest: &Destination)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let target = &dest.target;
    if let Some(refused) = unroutable(dest) {
        tracing::info!(reason = %refused, "TCP connection refused");
        return;
    }
    for attempt in 1..=TCP_CONNECT_ATTEMPTS {
        match dest.tcp.clone().dispatch((), None).await {
            Ok((mut peer, ep)) => {
                let peer_id = ep
                    .identity
                    .map(|i| i.spiffe_id())
                    .unwrap_or_else(|| "-".into());
                tracing::debug!(%target, addr = %ep.address, peer = %peer_id, "TCP forwarded");
                if let Err(e) = crate::splice::splice(&mut io, &mut peer).await {
                    tracing::debug!(error = %e, "TCP connection closed with an error");
                }
                return;
            }
            Err(e) => {
                tracing::info!(%target, attempt, error = %e, "TCP connect failed");
            }
        }
    }
}
