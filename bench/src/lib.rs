//! `bench`: benchmark tooling. The `putload` binary (`src/bin/putload.rs`,
//! a Put load generator used by `bench/scripts/catchup.sh`) and
//! [`compare`], the Strata-vs-etcd comparison runner behind the
//! `strata-compare` binary; the orchestration/tooling issues fill in the rest.

pub mod compare;
