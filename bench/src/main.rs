//! `strata-bench`: parse the flags, run the workload on a multi-thread
//! tokio runtime, print the report (text or `--output json`) on stdout.
//! Fatal errors go to stderr with exit status 1; flag errors exit 2.

use bench::cli::{Cli, Output};
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    let (output, precise) = (cli.global.output, cli.global.precise);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("invariant: tokio runtime builds");
    match rt.block_on(bench::workload::run(cli)) {
        Ok(report) => match output {
            Output::Json => println!("{}", report.to_json()),
            Output::Text => print!("{}", report.to_text(precise)),
        },
        Err(e) => {
            eprintln!("strata-bench: {e:#}");
            std::process::exit(1);
        }
    }
}
