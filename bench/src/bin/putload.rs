//! putload: write N keys with fixed-size values to an etcd-compatible
//! server or cluster, one Put per key (so one raft entry per key), from a few
//! dozen concurrent clients spread over the given endpoints. Used by
//! `bench/scripts/catchup.sh` to build up a raft log quickly (etcdctl starts
//! one process per request, which is far too slow for tens of thousands).
//!
//! ```text
//! putload <endpoint[,endpoint...]> [keys=20000] [value-size=256] [clients=64] [prefix=catchup/]
//! ```
//!
//! Endpoints are `host:port` or `http://host:port`. Keys are
//! `<prefix><index, zero-padded>`. A failed Put is retried (up to 20 times,
//! 50 ms apart) so a leader change does not abort the load. Prints the count,
//! the elapsed time and the rate on stdout.

use std::time::{Duration, Instant};

use proto::etcdserverpb::{kv_client::KvClient, PutRequest};
use tonic::transport::Channel;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).map_or(default, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("argument {i} ({s:?}) is not valid"))
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(endpoints) = args.first() else {
        eprintln!(
            "usage: putload <endpoint[,endpoint...]> [keys=20000] [value-size=256] [clients=64] [prefix=catchup/]"
        );
        std::process::exit(2);
    };
    let keys: usize = arg(&args, 1, 20000);
    let value_size: usize = arg(&args, 2, 256);
    let clients: usize = arg(&args, 3, 64).max(1);
    let prefix: String = arg(&args, 4, "catchup/".to_string());

    let mut channels = Vec::new();
    for ep in endpoints.split(',').filter(|s| !s.is_empty()) {
        let url = if ep.contains("://") {
            ep.to_string()
        } else {
            format!("http://{ep}")
        };
        let ch = Channel::from_shared(url.clone())
            .unwrap_or_else(|e| panic!("bad endpoint {url}: {e}"))
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        channels.push(ch);
    }
    assert!(!channels.is_empty(), "no endpoints");
    let value = vec![b'x'; value_size];
    let width = keys.max(1).to_string().len();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let mut kv = KvClient::new(channels[c % channels.len()].clone());
            let value = value.clone();
            let prefix = prefix.clone();
            tokio::spawn(async move {
                for i in (c..keys).step_by(clients) {
                    let req = PutRequest {
                        key: format!("{prefix}{i:0width$}").into_bytes(),
                        value: value.clone(),
                        ..Default::default()
                    };
                    let mut tries = 0;
                    loop {
                        match kv.put(req.clone()).await {
                            Ok(_) => break,
                            Err(e) if tries < 20 => {
                                tries += 1;
                                eprintln!("put {i}: {e}; retrying");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => panic!("put {i} failed: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("load task");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "putload: {keys} puts of {value_size} B in {secs:.2} s ({:.0}/s)",
        keys as f64 / secs
    );
}
