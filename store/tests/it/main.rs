//! Integration tests: real `strata` processes driven by the `etcd-client`
//! crate (and real etcd for the differential tests).

mod auth;
mod badinput;
mod cluster;
mod corrupt;
mod crash;
mod differential;
#[cfg(feature = "failpoints")]
mod failpoints;
mod gateway;
mod harness;
mod kubernetes;
mod kv;
mod lease;
mod maintenance;
mod membership;
mod offline;
mod ops;
mod smoke;
mod snapshot;
mod tls;
mod watch;
