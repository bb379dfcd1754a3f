//! `strata-bench`: parse the flags, run the workload on a multi-thread
//! tokio runtime, print the report (text or `--output json`) on stdout.
//! Fatal errors go to stderr with exit status 1; flag errors exit 2.
//! `strata-bench compare ...` hands over to [`bench::compare`].

use bench::cli::{Cli, Output};
use clap::Parser;

fn main() {
    // `compare` drives whole servers and has its own flags (see
    // `bench::compare`); every other subcommand is a workload.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "compare") {
        args.splice(0..2, [std::ffi::OsString::from("strata-bench compare")]);
        if let Err(e) = bench::compare::main_with_args(args) {
            eprintln!("strata-bench compare: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse_from(args);
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
