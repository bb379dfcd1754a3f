//! Ports for the servers a run starts on 127.0.0.1: a server is started
//! with its port on the command line, so the port has to be chosen before
//! the server binds it, and stay free until then.
//!
//! The obvious way (bind port 0, read the port, close) hands out a port in
//! the kernel's ephemeral range (32768–60999 by default), which every
//! outgoing connection also draws from: the proxies' upstream connections,
//! the clients, the members' peer connections. One of them can take the
//! port before the server binds it, and a member restarted by the kill
//! nemesis on its old port can find it taken the same way. These ports
//! come from below that range instead, each handed out once per process.

use std::sync::atomic::{AtomicU32, Ordering};

/// First port handed out (above the well-known and registered services
/// that test machines commonly run).
const FIRST: u32 = 20_000;
/// Ports from `FIRST` up to the default ephemeral range.
const SPAN: u32 = 12_768;
/// Offset (from `FIRST`) of the next port to try; `u32::MAX` until the
/// first call picks a starting point.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A port on 127.0.0.1 that no socket holds now, that this process has not
/// handed out before, and that no outgoing connection will be given.
pub fn free_port() -> anyhow::Result<u16> {
    // Processes running side by side (cargo runs test binaries in turn,
    // but a developer may run two) start at different points.
    let start = (u64::from(std::process::id()))
        .wrapping_mul(2_654_435_761)
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::from(d.subsec_nanos())),
        )
        % u64::from(SPAN);
    let _ = NEXT.compare_exchange(u32::MAX, start as u32, Ordering::AcqRel, Ordering::Acquire);
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::AcqRel) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port on 127.0.0.1 in {FIRST}..{}", FIRST + SPAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_distinct_and_free() {
        let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        for p in &ports {
            assert!((FIRST..FIRST + SPAN).contains(&u32::from(*p)), "{p}");
            assert!(*p < ephemeral_low, "{p} is in the ephemeral range");
        }
        // A port something else holds is skipped.
        let due = (FIRST + NEXT.load(Ordering::Acquire) % SPAN) as u16;
        let Ok(_held) = std::net::TcpListener::bind(("127.0.0.1", due)) else {
            return; // taken already: skipped anyway
        };
        let next = free_port().unwrap();
        assert_ne!(next, due);
        assert!(std::net::TcpListener::bind(("127.0.0.1", next)).is_ok());
    }
}
