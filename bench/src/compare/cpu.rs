//! CPU time per request of each side of a run: the server (every member's
//! user + system time from `/proc/<pid>/stat`, read right before and right
//! after the load generator runs) and the load generator (the runner's
//! `RUSAGE_CHILDREN` over the same span: the generator is the only child
//! reaped in it).
//!
//! On a machine where the generator shares the server's cores, a
//! CPU-bound run's throughput is cores / (generator + server CPU per
//! request), so these figures say how much of a throughput ratio is the
//! server and how much the generator allows ([`bounds`]).

use std::time::Duration;

use anyhow::{Context, Result};

/// User + system CPU clock ticks from a `/proc/<pid>/stat` line (fields
/// 14 and 15; the command name in field 2 may hold spaces and parentheses,
/// so fields are counted after its last `)`).
pub fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ")": state is field 3, so utime (14) is the 12th.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let ticks = stat_ticks(&s).with_context(|| format!("parse {path}"))?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_sec(),
    ))
}

/// Total CPU of the processes `pids` so far (None if one is gone).
pub fn processes_cpu(pids: &[u32]) -> Option<Duration> {
    pids.iter().map(|p| process_cpu(*p).ok()).sum()
}

/// CPU (user + system) used so far by this process's terminated and
/// waited-for children.
pub fn children_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// What the CPU figures of a Strata run and an etcd run (µs per request,
/// server and generator) say about their throughput ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Strata's server CPU per request over etcd's (lower is better).
    pub server_ratio: f64,
    /// The Strata/etcd throughput ratio if both runs were CPU-bound on the
    /// same cores: (etcd's generator + server) / (Strata's).
    pub cpu_bound_ratio: f64,
    /// The ratio a server using no CPU at all would reach against this etcd
    /// run: (etcd's generator + server) / the generator's CPU in the Strata
    /// run.
    pub zero_cost_ceiling: f64,
}

/// [`Bounds`] from µs per request: Strata's server and generator, etcd's.
pub fn bounds(strata: (f64, f64), etcd: (f64, f64)) -> Option<Bounds> {
    let ((ss, sg), (es, eg)) = (strata, etcd);
    if !(ss > 0.0 && sg > 0.0 && es > 0.0 && eg > 0.0) {
        return None;
    }
    Some(Bounds {
        server_ratio: ss / es,
        cpu_bound_ratio: (es + eg) / (ss + sg),
        zero_cost_ceiling: (es + eg) / sg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_counts_fields_after_the_command_name() {
        // A command name with a space and a parenthesis in it.
        let line = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    700 55 0 0 20 0 9 0 100 2000000 3000 18446744073709551615";
        assert_eq!(stat_ticks(line), Some(755));
        assert_eq!(stat_ticks("4242 (x) S 1"), None);
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn this_process_and_its_children_have_cpu_figures() {
        let me = std::process::id();
        let before = process_cpu(me).unwrap();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = process_cpu(me).unwrap();
        assert!(after > before, "{before:?} → {after:?}");
        assert!(processes_cpu(&[me, u32::MAX]).is_none());
        let c0 = children_cpu();
        let st = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(st.success());
        assert!(children_cpu() > c0);
    }

    #[test]
    fn bounds_from_cpu_per_request() {
        // etcd: server 40, generator 30 µs; Strata: server 10, generator 25.
        let b = bounds((10.0, 25.0), (40.0, 30.0)).unwrap();
        assert!((b.server_ratio - 0.25).abs() < 1e-9);
        assert!((b.cpu_bound_ratio - 2.0).abs() < 1e-9);
        assert!((b.zero_cost_ceiling - 2.8).abs() < 1e-9);
        assert_eq!(bounds((0.0, 25.0), (40.0, 30.0)), None);
    }
}
