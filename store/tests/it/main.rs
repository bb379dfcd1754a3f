//! Integration tests: real `strata` processes driven by the `etcd-client`
//! crate (and real etcd for the differential tests).

mod harness;
mod offline;
mod smoke;
mod crash;
