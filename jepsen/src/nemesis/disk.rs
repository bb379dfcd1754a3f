//! Disk faults: kill one node, damage one of its data files (flip a bit or
//! cut off the file's tail), or make it lose its unsynced writes (Strata's
//! `POST /debug/powerfail`, failpoints builds), restart it, and record what the server did:
//! refuse to start (then the node is replaced by a wiped member so the run
//! goes on), or start and serve. Serving corrupt data shows up later as a
//! HashKV mismatch or a checker anomaly.
//!
//! Files are picked among the raft log and snapshot files: Strata keeps
//! them under `<data-dir>/member/{wal,snap}` (raft-engine log files and
//! snapshot files), etcd under `member/wal/*.wal` and `member/snap/` (with
//! the bbolt `db`).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use super::Corruption;
use crate::cluster::Cluster;

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&p, out),
            Ok(t) if t.is_file() && e.metadata().map(|m| m.len() > 0).unwrap_or(false) => {
                out.push(p)
            }
            _ => {}
        }
    }
}

/// Damages one data file of `node` (already stopped): `pick` chooses the
/// file and the offset. Returns a description.
pub fn corrupt(data_dir: &Path, how: Corruption, pick: u64) -> anyhow::Result<serde_json::Value> {
    let mut files = Vec::new();
    files_under(&data_dir.join("member"), &mut files);
    // Lock files and the like carry no data.
    files.retain(|p| {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        !n.contains("LOCK") && !n.ends_with(".tmp") && !n.ends_with(".lock")
    });
    // Files with at least 4 KiB hold records; a header-only file (a fresh
    // raft-engine rewrite file) is chosen only when nothing else is there.
    if files
        .iter()
        .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() >= 4096))
    {
        files.retain(|p| std::fs::metadata(p).is_ok_and(|m| m.len() >= 4096));
    }
    files.sort();
    if files.is_empty() {
        bail!("no data files under {}", data_dir.display());
    }
    let path = &files[(pick % files.len() as u64) as usize];
    let len = std::fs::metadata(path)?.len();
    // Log files are preallocated: damage the written part (up to the last
    // non-zero byte), not the zeros after it.
    let data = std::fs::read(path)?;
    let end = data
        .iter()
        .rposition(|&b| b != 0)
        .map_or(len, |p| p as u64 + 1);
    let rel = path
        .strip_prefix(data_dir)
        .unwrap_or(path)
        .display()
        .to_string();
    match how {
        Corruption::BitFlip => {
            // Somewhere in the last 64 KiB: recent records are the ones a
            // restart reads first and the ones least likely to be
            // overwritten by compaction.
            let window = end.min(64 * 1024);
            let off = end - window + (pick >> 8) % window;
            let bit = (pick >> 40) % 8;
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)?;
            let mut b = [0u8];
            f.seek(SeekFrom::Start(off))?;
            f.read_exact(&mut b)?;
            b[0] ^= 1 << bit;
            f.seek(SeekFrom::Start(off))?;
            f.write_all(&b)?;
            f.sync_all()?;
            Ok(json!({"file": rel, "len": len, "data_end": end, "offset": off, "bit": bit}))
        }
        Corruption::PowerFail => bail!("a power failure is the server's to simulate"),
        Corruption::Truncate => {
            // Cut up to 4 KiB of the written part (and the zeros after it).
            let cut = 1 + (pick >> 8) % end.min(4096);
            let f = std::fs::OpenOptions::new().write(true).open(path)?;
            f.set_len(end - cut)?;
            f.sync_all()?;
            Ok(json!({"file": rel, "len": len, "data_end": end, "new_len": end - cut}))
        }
    }
}

/// The fault: kill `node` (one node: a minority), corrupt one of its data
/// files, restart it, observe.
pub async fn fault(
    cluster: &mut Cluster,
    node: usize,
    how: Corruption,
    pick: u64,
    detail: &mut serde_json::Value,
) -> anyhow::Result<()> {
    if !cluster.is_running(node) {
        bail!("{} is not running", cluster.nodes[node].name);
    }
    if how == Corruption::PowerFail {
        // The request never gets an answer: the server aborts.
        let url = cluster.nodes[node].addr.client_url.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            super::http::request(&url, "POST", "/debug/powerfail", ""),
        )
        .await;
        for _ in 0..20 {
            if !cluster.is_running(node) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if cluster.is_running(node) {
            cluster.kill_node(node)?;
            detail["note"] = json!("still running 2 s after POST /debug/powerfail: killed");
        }
    }
    cluster.kill_node(node)?;
    let what = match how {
        Corruption::PowerFail => Ok(json!({"unsynced_writes": "dropped by the server"})),
        _ => corrupt(&cluster.nodes[node].data_dir, how, pick),
    }
    .with_context(|| format!("corrupting {}", cluster.nodes[node].name));
    let what = match what {
        Ok(w) => w,
        Err(e) => {
            cluster.start_node(node)?;
            return Err(e);
        }
    };
    tracing::info!(node = %cluster.nodes[node].name, %what, "corrupted a data file");
    detail["damage"] = what;
    let log_len = std::fs::metadata(&cluster.nodes[node].log)
        .map(|m| m.len())
        .unwrap_or(0);
    cluster.start_node(node)?;
    // Give it time to replay its log and rejoin, or to refuse.
    let mut outcome = "started and serving";
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !cluster.is_running(node) {
            outcome = "refused to start";
            break;
        }
    }
    if outcome != "refused to start" {
        match tokio::time::timeout(Duration::from_secs(3), cluster.status(node)).await {
            Ok(Ok((_, leader, _, rev))) => {
                detail["status"] = json!({"leader": leader, "revision": rev})
            }
            _ => outcome = "running but not answering Status",
        }
    }
    // The server's own words about it.
    if let Ok(text) = std::fs::read(&cluster.nodes[node].log) {
        let tail =
            String::from_utf8_lossy(&text[(log_len as usize).min(text.len())..]).into_owned();
        let mut errors: Vec<&str> = tail
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                [
                    "\"level\":\"error\"",
                    "\"level\":\"fatal\"",
                    "\"level\":\"panic\"",
                ]
                .iter()
                .any(|lv| l.contains(lv))
                    || l.contains("corrupt")
                    || l.contains("panicked")
                    || l.starts_with("strata:")
            })
            .map(|l| l.char_indices().nth(600).map_or(l, |(i, _)| &l[..i]))
            .collect();
        errors.drain(..errors.len().saturating_sub(5));
        detail["log"] = json!(errors);
    }
    tracing::warn!(node = %cluster.nodes[node].name, outcome, "after the disk fault");
    detail["outcome"] = json!(outcome);
    if outcome == "refused to start" {
        let mut d = json!({});
        super::member_replace(cluster, node, &mut d).await?;
        detail["replaced"] = d;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_one_bit_or_truncates_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("member/wal");
        std::fs::create_dir_all(&wal).unwrap();
        let f = wal.join("0001.log");
        let mut content = vec![0xAAu8; 6_000];
        content.resize(10_000, 0);
        std::fs::write(&f, &content).unwrap();
        std::fs::write(wal.join("LOCK"), b"x").unwrap();
        std::fs::write(wal.join("0001.rewrite"), [1u8; 64]).unwrap();
        let d = corrupt(dir.path(), Corruption::BitFlip, 0x1234_5678_9abc).unwrap();
        assert_eq!(d["file"], "member/wal/0001.log");
        let data = std::fs::read(&f).unwrap();
        assert_eq!(data.len(), 10_000);
        let changed: Vec<usize> = (0..data.len()).filter(|&i| data[i] != content[i]).collect();
        assert_eq!(changed.len(), 1);
        assert!(changed[0] < 6_000, "flipped in the preallocated zeros");
        assert_eq!((data[changed[0]] ^ content[changed[0]]).count_ones(), 1);
        let d = corrupt(dir.path(), Corruption::Truncate, 0x1234_5678_9abc).unwrap();
        let new_len = d["new_len"].as_u64().unwrap();
        assert!((6_000 - 4096..6_000).contains(&new_len), "{d}");
        assert_eq!(std::fs::metadata(&f).unwrap().len(), new_len);
    }
}
