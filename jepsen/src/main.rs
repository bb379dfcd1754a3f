//! `strata-jepsen`: command-line entry point (see the crate docs).

fn main() -> anyhow::Result<()> {
    anyhow::bail!("strata-jepsen: no subcommands yet")
}
