//! `jepsen`: a Jepsen-style harness for etcd-compatible clusters (Strata or
//! real etcd) and the checkers that judge what it records.
//!
//! Where things live:
//! - [`history`]: the recorded operations (`history.jsonl`), watch
//!   observations (`watches.jsonl`) and faults (`faults.jsonl`): the one
//!   format every workload writes and every checker reads.
//! - [`client`]: the tonic client the workloads use, and how a failed
//!   request is classified (definite `fail` or indefinite `info`).
//! - [`workload`]: the client processes that drive a cluster and record
//!   `history.jsonl` / `watches.jsonl` through a [`workload::Recorder`].
//! - [`report`]: the run's self-contained `report.html`.
//! - [`checker`]: verdicts on a recorded run (linearizability, revision
//!   order, Elle-style cycles, watch guarantees, server logs).
//! - [`cluster`]: the server processes and the network between them.
//! - [`nemesis`]: the seeded fault schedule and every fault.
//! - [`runner`]: one test run, from cluster start to verdict.
//! - [`kube`]: a real kube-apiserver and kubectl on the cluster: the
//!   Kubernetes end-to-end scenario, Kubernetes traffic under faults, and
//!   kube-apiserver's request latencies.
//!
//! The binary `strata-jepsen` (src/main.rs) runs a test or re-checks a saved
//! history.

pub mod checker;
pub mod client;
pub mod cluster;
pub mod history;
pub mod kube;
pub mod nemesis;
pub mod report;
pub mod runner;
pub mod workload;
