//! Ports for the `weft dev` tests.
//!
//! The mesh config file must name workload, application and upstream ports before `weft dev`
//! starts, and it refuses port 0 there, so these tests pick ports in advance. They pick them
//! below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768 and up by
//! default), where the port-0 listeners and outgoing connections of every other test land: a
//! port chosen here and released can then be taken only by another test choosing the same way,
//! which the random start makes unlikely, instead of by any socket on the machine.

use std::sync::atomic::{AtomicU16, Ordering};

/// Ports handed out by this process, so two calls never return the same one.
static NEXT: AtomicU16 = AtomicU16::new(0);

/// A port below the ephemeral range that was free when checked.
pub fn free_port() -> u16 {
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    if NEXT.load(Ordering::Relaxed) == 0 {
        // A start that differs between test processes running at once.
        let seed = std::process::id() as u16
            ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u16)
                .unwrap_or(0));
        let _ = NEXT.compare_exchange(0, seed % SPAN + 1, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN);
}
