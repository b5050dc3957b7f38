//! What parsing and verifying a CSR costs per key type, next to a fixed reference in the same
//! run (SHA-256 of 1 KiB), so the figures are comparable across machines as ratios.
//! `cargo run --release -p cvm-core --example csr_cost`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use cvm_core::Csr;

fn per_op(iterations: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed() / iterations
}

fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
    let data = [0u8; 1024];
    let reference = per_op(20_000, || {
        black_box(ring::digest::digest(
            &ring::digest::SHA256,
            black_box(&data),
        ));
    });
    println!(
        "{:<28} {:>10} {:>12}",
        "operation", "per op", "x sha256(1K)"
    );
    println!(
        "{:<28} {:>8.1}us {:>12.1}",
        "sha256 of 1 KiB",
        reference.as_secs_f64() * 1e6,
        1.0
    );
    for file in ["p256.csr.pem", "p384.csr.pem", "rsa2048.csr.pem"] {
        let pem = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        let t = per_op(2_000, || {
            black_box(Csr::parse_pem(black_box(&pem)).unwrap());
        });
        println!(
            "{:<28} {:>8.1}us {:>12.1}",
            format!("parse+verify {file}"),
            t.as_secs_f64() * 1e6,
            t.as_secs_f64() / reference.as_secs_f64()
        );
    }
}
