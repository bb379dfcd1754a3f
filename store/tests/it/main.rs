//! Integration tests: real `strata` processes driven by the `etcd-client`
//! crate (and real etcd for the differential tests).

mod auth;
mod cluster;
mod crash;
mod differential;
mod harness;
mod kv;
mod lease;
mod maintenance;
mod membership;
mod offline;
mod smoke;
mod watch;
