//! `strata-compare`: runs Strata and real etcd side by side with the same
//! workloads and prints the comparison (see `bench::compare`). Thin wrapper:
//! all logic is in the library so `strata-bench compare` can reuse it.

fn main() -> anyhow::Result<()> {
    bench::compare::main_with_args(std::env::args_os())
}
