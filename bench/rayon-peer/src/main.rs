//! The Rayon peer of knhk-lua's `executor` benchmark suite.
//!
//! bench-executor starts this program once and sends it one command per
//! line on stdin; each answer is one line on stdout, `SECONDS RESULT`:
//!
//!   fib N WORKERS          fib(N), rayon::join at every call
//!   fib_seq N              fib(N), plain recursion (no pool)
//!   skynet LEAVES WORKERS  skynet: ten children per node, nested joins
//!   scope N WORKERS        N trivial spawns in one rayon::scope
//!
//! The time is the wall time of `pool.install(..)` around the work, so it
//! includes handing the work to the pool and getting the result back, as
//! the C side's figures include spawning the root task and waiting for it.
//! Pools are built once per worker count and kept, so runs after the first
//! are warm.
use std::collections::HashMap;
use std::hint::black_box;
use std::io::{self, BufRead, Write};
use std::time::Instant;

fn fib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = rayon::join(|| fib(n - 1), || fib(n - 2));
    a + b
}

fn fib_seq(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    fib_seq(n - 1) + fib_seq(n - 2)
}

/// Skynet: a node of `size` leaves numbered from `num` has ten children of
/// size / 10; a leaf is its number; a node is the sum of its children.
fn skynet(num: u64, size: u64) -> u64 {
    if size == 1 {
        return num;
    }
    children(num, size / 10, 0, 10)
}

/// Children lo..hi of a node, split in halves with join.
fn children(num: u64, child: u64, lo: u64, hi: u64) -> u64 {
    if hi - lo == 1 {
        return skynet(num + lo * child, child);
    }
    let mid = (lo + hi) / 2;
    let (a, b) = rayon::join(
        || children(num, child, lo, mid),
        || children(num, child, mid, hi),
    );
    a + b
}

fn trivial_spawns(n: u64) -> u64 {
    rayon::scope(|s| {
        for _ in 0..n {
            s.spawn(|_| black_box(()));
        }
    });
    n
}

fn main() {
    let mut pools: HashMap<usize, rayon::ThreadPool> = HashMap::new();
    let stdin = io::stdin();
    let mut out = io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.expect("rayon-peer: cannot read stdin");
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        let arg = |i: usize| -> u64 {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("rayon-peer: bad command '{}'", line))
        };
        let (secs, result) = if words[0] == "fib_seq" {
            let n = black_box(arg(1));
            let t0 = Instant::now();
            let r = fib_seq(n);
            (t0.elapsed().as_secs_f64(), r)
        } else {
            let (n, workers) = (arg(1), arg(2) as usize);
            let pool = pools.entry(workers).or_insert_with(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(workers)
                    .build()
                    .expect("rayon-peer: cannot build the pool")
            });
            let work: fn(u64) -> u64 = match words[0] {
                "fib" => fib,
                "skynet" => |leaves| skynet(0, leaves),
                "scope" => trivial_spawns,
                other => panic!("rayon-peer: unknown command '{}'", other),
            };
            let t0 = Instant::now();
            let r = pool.install(|| work(n));
            (t0.elapsed().as_secs_f64(), r)
        };
        writeln!(out, "{:.9} {}", secs, result).expect("rayon-peer: cannot write stdout");
        out.flush().expect("rayon-peer: cannot write stdout");
    }
}
