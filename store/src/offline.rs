//! offline: the etcdutl-style offline tools, run as `strata snapshot status
//! FILE` and `strata snapshot restore FILE --data-dir DIR ...`, with
//! etcdutl's flags and outputs (`-w simple|table|json|fields`; sizes as
//! etcdutl prints them).
//!
//! They read either a file saved by `etcdctl snapshot save` from Strata (the
//! snapshot format, zero-padded to 512 bytes, then a SHA-256 of everything
//! before it) or a raw `member/snap/*.snap` file. The SHA-256 trailer and
//! every record CRC are verified, and nothing may follow the end record but
//! the padding; a corrupted or truncated file is rejected. As with
//! etcdutl, `restore` requires the trailer unless `--skip-hash-check`, and
//! checks everything before it writes anything (a failure while writing
//! removes what it created). `--bump-revision N --mark-compacted` starts the
//! restored store N revisions later, compacted there.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Arg, ArgAction, Command};
use raft::eraftpb::ConfState;
use sha2::{Digest, Sha256};

use crate::apply::StateMachine;
use crate::config::parse_initial_cluster;
use crate::membership;
use crate::raft::storage::RaftStorage;
use crate::snapshot::{self, SnapDir};

/// How to treat the SHA-256 trailer that `etcdctl snapshot save` files end
/// with (etcdutl's `--skip-hash-check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashCheck {
    /// Verify the trailer when the file has one; a file without one (a raw
    /// `member/snap/*.snap`) is read on its record CRCs alone (`status`).
    IfPresent,
    /// The file must carry a trailer, and it must match (`restore`).
    Required,
    /// Ignore the trailer (`restore --skip-hash-check`); record CRCs are
    /// still verified.
    Skip,
}

/// Whether a file of `len` bytes ends with a SHA-256 trailer: etcd's rule,
/// the body is a whole number of 512-byte pages.
fn has_hash(len: usize) -> bool {
    len >= 512 + 32 && len % 512 == 32
}

/// Read and verify a snapshot file (the trailer as `check` says, then every
/// record's CRC).
pub fn load(path: &Path, check: HashCheck) -> anyhow::Result<StateMachine> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let trailer = has_hash(bytes.len());
    let body = if trailer {
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if check != HashCheck::Skip {
            let got = Sha256::digest(body);
            if got.as_slice() != sum {
                bail!(
                    "snapshot file {} failed its integrity check: sha256 mismatch (expected {}, got {})",
                    path.display(),
                    hex::encode(sum),
                    hex::encode(got)
                );
            }
        }
        body
    } else {
        if check == HashCheck::Required {
            bail!(
                "snapshot file {}: snapshot missing hash but --skip-hash-check=false \
                 (a file copied from a data directory needs --skip-hash-check; \
                 a saved snapshot that lost its trailer is truncated)",
                path.display()
            );
        }
        &bytes[..]
    };
    snapshot::read_exact_from(body, trailer)
        .with_context(|| format!("{} is not a valid snapshot", path.display()))
}

/// What `snapshot status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// HashKV at the snapshot's revision.
    pub hash: u32,
    /// The snapshot's revision.
    pub revision: i64,
    /// Number of live keys.
    pub total_keys: usize,
    /// File size in bytes.
    pub total_size: u64,
}

/// Status of a snapshot file.
pub fn status(path: &Path) -> anyhow::Result<Status> {
    let sm = load(path, HashCheck::IfPresent)?;
    let rev = sm.mvcc.current_rev();
    Ok(Status {
        hash: sm.mvcc.hash_kv(rev).map_err(|e| anyhow::anyhow!("{e}"))?.0,
        revision: rev,
        total_keys: sm.mvcc.live_keys(),
        total_size: std::fs::metadata(path)?.len(),
    })
}

/// Options for `snapshot restore` (etcdutl's flags).
#[derive(Debug, Clone)]
pub struct RestoreOpts {
    /// New member's name.
    pub name: String,
    /// Target data dir (must not exist).
    pub data_dir: PathBuf,
    /// Target raft log dir (default `<data-dir>/member/wal`).
    pub wal_dir: Option<PathBuf>,
    /// `--initial-cluster`.
    pub initial_cluster: String,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: String,
    /// `--initial-advertise-peer-urls`.
    pub initial_advertise_peer_urls: String,
    /// `--skip-hash-check`: ignore the SHA-256 trailer (record CRCs are
    /// still verified); needed for a file copied from a data directory.
    pub skip_hash_check: bool,
    /// `--bump-revision`: how much to raise the latest revision, so that
    /// clients that cached revisions of the old cluster never see a
    /// revision go backwards.
    pub bump_revision: u64,
    /// `--mark-compacted`: compact at the (bumped) latest revision, so that
    /// watchers and reads at older revisions get "compacted" instead of
    /// stale history. Required with `--bump-revision`, refused without.
    pub mark_compacted: bool,
}

/// Restore a snapshot into a new data dir for a new cluster: the key space,
/// history and leases are kept; membership comes from the options.
pub fn restore(file: &Path, o: &RestoreOpts) -> anyhow::Result<()> {
    if o.data_dir.exists() {
        bail!("data-dir {:?} exists", o.data_dir.display().to_string());
    }
    if let Some(w) = o.wal_dir.as_ref().filter(|w| w.exists()) {
        bail!("wal-dir {:?} exists", w.display().to_string());
    }
    if o.bump_revision > 0 && !o.mark_compacted {
        bail!("--mark-compacted required if --bump-revision > 0");
    }
    if o.bump_revision == 0 && o.mark_compacted {
        bail!("--mark-compacted is only allowed with --bump-revision > 0");
    }
    // Everything is checked before anything is written; a failure while
    // writing removes what was created.
    let check = if o.skip_hash_check {
        HashCheck::Skip
    } else {
        HashCheck::Required
    };
    let mut sm = load(file, check)?;
    if o.bump_revision > 0 {
        let mut m = sm.mvcc.snapshot();
        m.current = m
            .current
            .checked_add(i64::try_from(o.bump_revision).unwrap_or(i64::MAX))
            .context("--bump-revision overflows the revision")?;
        let rev = m.current;
        sm.mvcc = crate::mvcc::Mvcc::from_snapshot(m);
        sm.mvcc
            .compact(rev)
            .map_err(|e| anyhow::anyhow!("cannot mark revision {rev} compacted: {e}"))?;
    }
    let r = write_restored(sm, o);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&o.data_dir);
        if let Some(w) = &o.wal_dir {
            let _ = std::fs::remove_dir_all(w);
        }
    }
    r
}

/// Write the new member's data dir from a verified snapshot.
fn write_restored(mut sm: StateMachine, o: &RestoreOpts) -> anyhow::Result<()> {
    let cluster = parse_initial_cluster(&o.initial_cluster).map_err(|e| anyhow::anyhow!(e))?;
    let mine = cluster.get(&o.name).with_context(|| {
        format!(
            "couldn't find local name {:?} in the initial cluster configuration",
            o.name
        )
    })?;
    let adv: Vec<String> = o
        .initial_advertise_peer_urls
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .collect();
    let (mut a, mut b) = (adv.clone(), mine.clone());
    a.sort();
    b.sort();
    if a != b {
        bail!(
            "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
            o.name,
            mine.join(","),
            adv.join(",")
        );
    }
    let members = membership::initial_members(&cluster, &o.initial_cluster_token);
    let voters: Vec<u64> = members.iter().map(|m| m.id).collect();
    // The new cluster's log starts right after the restored state.
    sm.applied_index = 1;
    sm.applied_term = 1;
    sm.conf_state = ConfState {
        voters: voters.clone(),
        ..Default::default()
    };
    sm.alarms.clear();
    sm.removed.clear();
    sm.members = members
        .iter()
        .map(|m| {
            (
                m.id,
                proto::etcdserverpb::Member {
                    id: m.id,
                    name: m.name.clone(),
                    peer_ur_ls: m.peer_urls.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();
    let member_dir = o.data_dir.join("member");
    std::fs::create_dir_all(&member_dir)?;
    let wal = o.wal_dir.clone().unwrap_or_else(|| member_dir.join("wal"));
    let snaps = SnapDir::open(member_dir.join("snap"), 2)?;
    snaps.save(&sm.view(), true)?;
    let storage = RaftStorage::open(&wal, true).context("cannot create the raft log")?;
    let mut meta = raft::eraftpb::SnapshotMetadata {
        index: 1,
        term: 1,
        ..Default::default()
    };
    meta.set_conf_state(ConfState {
        voters,
        ..Default::default()
    });
    storage.install_snapshot(&meta);
    Ok(())
}

/// A size as etcdutl prints it (SI units, e.g. "20 kB", "1.2 MB").
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let val = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

fn command() -> Command {
    let flag = |n: &'static str, d: &'static str, h: &'static str| {
        let a = Arg::new(n).long(n).help(h).action(ArgAction::Set);
        if d.is_empty() {
            a
        } else {
            a.default_value(d)
        }
    };
    Command::new("strata snapshot")
        .about("Offline snapshot tools (like etcdutl snapshot).")
        .subcommand_required(true)
        .subcommand(
            Command::new("status")
                .about("Print the hash, revision, total keys and size of a snapshot file.")
                .arg(Arg::new("file").required(true))
                .arg(flag("write-out", "simple", "Output format: simple, table, json or fields.").short('w')),
        )
        .subcommand(
            Command::new("restore")
                .about("Restore a snapshot file into a new data directory for a new cluster.")
                .arg(Arg::new("file").required(true))
                .arg(flag("name", "default", "Human-readable name for this member."))
                .arg(flag("data-dir", "", "Path to the data directory (default: ${name}.strata)."))
                .arg(flag("wal-dir", "", "Path to the raft log directory."))
                .arg(flag("initial-cluster", "", "Initial cluster configuration (default: ${name}=<initial-advertise-peer-urls>)."))
                .arg(flag("initial-cluster-token", "etcd-cluster", "Initial cluster token."))
                .arg(flag("initial-advertise-peer-urls", "http://localhost:2380", "This member's peer URLs."))
                .arg(flag("bump-revision", "0", "How much to increase the latest revision after restore."))
                .arg(
                    Arg::new("mark-compacted")
                        .long("mark-compacted")
                        .help("Mark the latest revision after restore as the point of scheduled compaction (required if --bump-revision > 0, disallowed otherwise).")
                        .num_args(0..=1)
                        .default_missing_value("true")
                        .default_value("false")
                        .value_parser(clap::value_parser!(bool)),
                )
                .arg(
                    Arg::new("skip-hash-check")
                        .long("skip-hash-check")
                        .help("Ignore snapshot integrity hash value (required if copied from data directory).")
                        .num_args(0..=1)
                        .default_missing_value("true")
                        .default_value("false")
                        .value_parser(clap::value_parser!(bool)),
                ),
        )
}

/// Run `strata snapshot ...` (`args` starts after `snapshot`).
pub fn main(args: Vec<String>) -> anyhow::Result<()> {
    let mut all = vec!["strata snapshot".to_string()];
    all.extend(args);
    let m = match command().try_get_matches_from(all) {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    let s = |m: &clap::ArgMatches, n: &str| m.get_one::<String>(n).cloned().unwrap_or_default();
    match m.subcommand() {
        Some(("status", m)) => {
            let format = s(m, "write-out");
            match format.as_str() {
                "simple" | "table" | "json" | "fields" => {}
                "protobuf" => bail!("protobuf not supported as output format"),
                _ => bail!("unsupported output format"),
            }
            let st = status(Path::new(&s(m, "file")))?;
            match format.as_str() {
                "fields" => {
                    println!("\"Hash\" : {}", st.hash);
                    println!("\"Revision\" : {}", st.revision);
                    println!("\"Keys\" : {}", st.total_keys);
                    println!("\"Size\" : {}", st.total_size);
                }
                "json" => println!(
                    r#"{{"hash":{},"revision":{},"totalKey":{},"totalSize":{}}}"#,
                    st.hash, st.revision, st.total_keys, st.total_size
                ),
                "table" => {
                    println!("+----------+----------+------------+------------+");
                    println!("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |");
                    println!("+----------+----------+------------+------------+");
                    println!(
                        "| {:08x} | {:>8} | {:>10} | {:>10} |",
                        st.hash,
                        st.revision,
                        st.total_keys,
                        human_bytes(st.total_size)
                    );
                    println!("+----------+----------+------------+------------+");
                }
                _ => println!(
                    "{:x}, {}, {}, {}",
                    st.hash,
                    st.revision,
                    st.total_keys,
                    human_bytes(st.total_size)
                ),
            }
            Ok(())
        }
        Some(("restore", m)) => {
            let name = s(m, "name");
            let data_dir = match s(m, "data-dir") {
                d if d.is_empty() => PathBuf::from(format!("{name}.strata")),
                d => PathBuf::from(d),
            };
            let adv = s(m, "initial-advertise-peer-urls");
            let ic = match s(m, "initial-cluster") {
                c if c.is_empty() => format!("{name}={adv}"),
                c => c,
            };
            let wal = s(m, "wal-dir");
            let o = RestoreOpts {
                name,
                data_dir: data_dir.clone(),
                wal_dir: (!wal.is_empty()).then(|| PathBuf::from(wal)),
                initial_cluster: ic,
                initial_cluster_token: s(m, "initial-cluster-token"),
                initial_advertise_peer_urls: adv,
                skip_hash_check: m
                    .get_one::<bool>("skip-hash-check")
                    .copied()
                    .unwrap_or(false),
                bump_revision: s(m, "bump-revision")
                    .parse()
                    .context("--bump-revision: expected a non-negative number")?,
                mark_compacted: m
                    .get_one::<bool>("mark-compacted")
                    .copied()
                    .unwrap_or(false),
            };
            restore(Path::new(&s(m, "file")), &o)?;
            println!("restored snapshot to {}", data_dir.display());
            Ok(())
        }
        _ => unreachable!("invariant: subcommand_required"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_etcdutl() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
        assert_eq!(human_bytes(999), "999 B");
    }

    #[test]
    fn trailer_is_detected_by_length() {
        assert!(has_hash(512 + 32));
        assert!(has_hash(4096 + 32));
        assert!(!has_hash(4096));
        assert!(!has_hash(4096 + 31));
        assert!(!has_hash(32));
    }
}
