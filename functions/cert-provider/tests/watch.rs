//! The README's local path for the provider, as a new user runs it: the Lambda bootstrap
//! under `cargo lambda watch`, invoked with `cargo lambda invoke --data-file`. The emulator
//! hands the function a deadline that cannot be a real one (the timeout in milliseconds as if
//! it were a time); the provider must answer with a certificate anyway, cold and warm.
//! Needs the local stack (`make up`) and cargo-lambda (installed into `.local/venv` by
//! `tests/local-stack/install.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// cargo-lambda from the project's virtualenv, else from PATH.
fn cargo_lambda_path() -> String {
    let venv = repo().join(".local/venv/bin");
    match std::env::var("PATH") {
        Ok(path) => format!("{}:{path}", venv.display()),
        Err(_) => venv.display().to_string(),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops the watcher and everything it started (it runs the function as a child).
struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cargo`, without the variables `cargo test` set for this test (`CARGO_PKG_*`,
/// `CARGO_MANIFEST_DIR`, ...): inherited, they change the build's fingerprint and the watcher
/// would rebuild every dependency.
fn cargo() -> Command {
    let mut command = Command::new("cargo");
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if (name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR")
            || name == "RUSTC_BOOTSTRAP"
        {
            command.env_remove(&name);
        }
    }
    command
}

fn invoke(port: u16) -> serde_json::Value {
    let out = cargo()
        .current_dir(repo())
        .env("PATH", cargo_lambda_path())
        .args(["lambda", "invoke", "-A", "127.0.0.1", "-P"])
        .arg(port.to_string())
        .args(["cert-provider", "--data-file", "events/cert-provider.json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo lambda invoke failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn the_bootstrap_answers_under_cargo_lambda_watch_cold_and_warm() {
    let env_file = std::env::var("CVM_LOCAL_ENV_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".local/env"));
    assert!(
        env_file.exists(),
        "{} is missing: start the local stack (make up), or run make test",
        env_file.display()
    );
    let port = free_port();
    // Its own process group, so the function it runs goes down with it.
    let mut command = cargo();
    command
        .current_dir(repo())
        .env("PATH", cargo_lambda_path())
        .args([
            "lambda",
            "watch",
            "--ignore-changes",
            "-A",
            "127.0.0.1",
            "-P",
        ])
        .arg(port.to_string())
        .arg("--env-file")
        .arg(&env_file)
        .args(["-p", "cert-provider", "--bin", "cert-provider"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let watch = Watch(command.spawn().unwrap());

    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "cargo lambda watch did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The first invocation builds and starts the function; then a warm one.
    for round in ["cold", "warm"] {
        let answer = invoke(port);
        let pem = answer["certificatePem"]
            .as_str()
            .unwrap_or_else(|| panic!("{round} invocation answered no certificate: {answer}"));
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE-----"),
            "{round}: {pem}"
        );
    }
    drop(watch);
}
