//! Embeds the build time (`CVM_BUILD_EPOCH`, seconds since 1970) in the binary: the client takes
//! it as a lower bound of the real time, to tell a clock that was never set (a board without an
//! RTC boots in 1970) from a set one. `SOURCE_DATE_EPOCH` wins when given (reproducible builds).
//! The value is fixed when this script last ran; an older date is still a valid lower bound.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let from_env = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!(
        "cargo:rustc-env=CVM_BUILD_EPOCH={}",
        from_env.unwrap_or(now)
    );
}
