//! `bench`: benchmark tooling. So far only the `putload` binary
//! (`src/bin/putload.rs`, a Put load generator used by
//! `bench/scripts/catchup.sh`); the orchestration/tooling issues fill in the rest.
