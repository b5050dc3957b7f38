//! Enrollment against a stub vending API on 127.0.0.1 that fails on purpose: 5xx, a lost
//! response, 429 with Retry-After (seconds or an HTTP date), a lockout in progress, enrollment
//! in progress, 403, an unreachable port, a certificate for another key. Retries where a retry
//! can succeed, never otherwise, always with the same key; nothing half-written on disk when
//! it fails. The binary's exit status tells a supervisor which is which (1 transient, 2
//! configuration, 3 refused for good), and it will not spend the token on a software key
//! unless told it is a development run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use cvm_device::clock::ClockCheck;
use cvm_device::enroll::{enroll, Backoff, EnrollError, EnrollOptions, Enrollment, Outcome};
use cvm_device::files::Sharing;
use cvm_device::FileKeyStore;

const FAST: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_millis(40),
};

fn options(url: String, ca: &Path, out: &Path, max_attempts: u32) -> EnrollOptions {
    EnrollOptions {
        url,
        serial: "STUB-1".into(),
        token: "one-time-token".to_owned().into(),
        ca: Some(ca.to_owned()),
        out: out.to_owned(),
        max_attempts,
        backoff: FAST,
        clock: ClockCheck::system(Duration::ZERO),
        sharing: Sharing::PRIVATE,
    }
}

/// The public-key fingerprints of the CSRs the stub received.
fn csr_keys(server: &TestServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            cvm_core::Csr::parse_pem(body["csr"].as_str().unwrap())
                .unwrap()
                .fingerprint()
                .as_str()
                .to_owned()
        })
        .collect()
}

struct Device {
    _dir: tempfile::TempDir,
    out: std::path::PathBuf,
    store: FileKeyStore,
}

fn device() -> Device {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cvm");
    let store = FileKeyStore::open_or_create(&out.join("device.key"), Sharing::PRIVATE).unwrap();
    Device {
        _dir: dir,
        out,
        store,
    }
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_key_until_it_works() {
    let stub = stub(|n, certificate| match n {
        0 | 1 => error(503, "service_unavailable", None),
        _ => vended(201, certificate, &TestCa::new("unused")),
    })
    .await;
    let d = device();
    let outcome = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 6),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::Enrolled { new: true, .. }));
    let keys = csr_keys(&stub.server);
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter().all(|k| k == &keys[0]),
        "one key for every attempt"
    );
    assert_eq!(
        files_in(&d.out),
        ["ca.pem", "certificate.pem", "device.key", "enrollment.json"]
    );
    let enrollment = Enrollment::load(&d.out).unwrap();
    assert_eq!(enrollment.thing_name, "thing-STUB-1");
    assert_eq!(enrollment.public_key_fingerprint, keys[0]);
    assert_eq!(
        enrollment.role_alias.as_deref(),
        Some("cvm-device-role-alias")
    );
    assert!(enrollment.key.starts_with("file:"));
    let _ = &stub.ca;

    // Once enrolled, running again asks nothing.
    let again = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 6),
    )
    .await
    .unwrap();
    assert!(matches!(again, Outcome::AlreadyEnrolled(_)));
    assert_eq!(stub.server.requests().len(), 3);
}

#[tokio::test]
async fn a_lost_response_is_asked_again_with_the_same_key_and_the_certificate_re_delivered() {
    // The first vend happens but its answer never arrives; the retry gets the same
    // certificate (200: re-delivered), because it comes with the same key.
    let first = Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = first.clone();
    let stub = stub(move |n, certificate| {
        let mut first = seen.lock().unwrap();
        match n {
            0 => {
                *first = Some(certificate);
                Reply::Drop
            }
            _ => vended(200, first.clone().unwrap(), &TestCa::new("unused")),
        }
    })
    .await;
    let d = device();
    let outcome = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 6),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::Enrolled { new: false, .. }));
    let keys = csr_keys(&stub.server);
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1]);
    let stored = std::fs::read_to_string(d.out.join("certificate.pem")).unwrap();
    assert_eq!(Some(stored), first.lock().unwrap().clone());
}

#[tokio::test]
async fn retry_after_is_respected_on_429_and_enrollment_in_progress() {
    let stub = stub(|n, certificate| match n {
        0 => error(429, "throttled", Some(1)),
        1 => error(409, "enrollment_in_progress", Some(1)),
        _ => vended(201, certificate, &TestCa::new("unused")),
    })
    .await;
    let d = device();
    let started = Instant::now();
    enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 6),
    )
    .await
    .unwrap();
    // The backoff alone would have waited a few tens of milliseconds.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stub.server.requests().len(), 3);
}

#[tokio::test]
async fn a_403_is_final_and_leaves_nothing_on_disk() {
    let stub = stub(|_, _| error(403, "invalid_credentials", None)).await;
    let d = device();
    let err = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 6),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EnrollError::Api { status: 403, code, .. } if code == "invalid_credentials"),
        "{err}"
    );
    assert_eq!(stub.server.requests().len(), 1, "no retry on a 4xx");
    assert_nothing_written(&d.out);
}

#[tokio::test]
async fn giving_up_after_the_last_attempt_leaves_nothing_on_disk() {
    let stub = stub(|_, _| error(500, "internal", None)).await;
    let d = device();
    let err = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 3),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, EnrollError::Api { status: 500, .. }), "{err}");
    assert_eq!(stub.server.requests().len(), 3);
    assert_nothing_written(&d.out);
}

#[tokio::test]
async fn a_certificate_for_another_key_is_refused() {
    let other = FileKeyStore::open_or_create(
        &tempfile::tempdir().unwrap().path().join("k"),
        Sharing::PRIVATE,
    )
    .unwrap();
    let other_csr = cvm_device::csr::build_csr(&other, "STUB-1").unwrap();
    let stub = stub(move |_, _| {
        let ca = TestCa::new("unused");
        vended(201, ca.certify_csr(&other_csr), &ca)
    })
    .await;
    let d = device();
    let err = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 3),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("not for this device's key"),
        "{err}"
    );
    assert_nothing_written(&d.out);
}

#[tokio::test]
async fn an_unreachable_api_is_retried_then_reported() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ca = TestCa::new("unused");
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    ca.write(ca_file.path());
    let d = device();
    let err = enroll(
        &d.store,
        &options(
            format!("https://127.0.0.1:{port}"),
            ca_file.path(),
            &d.out,
            2,
        ),
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, EnrollError::Network { .. }), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains('\n'));
    assert_nothing_written(&d.out);
}

#[tokio::test]
async fn an_api_with_an_untrusted_certificate_is_refused() {
    let stub = stub(|_, certificate| vended(201, certificate, &TestCa::new("unused"))).await;
    let stranger = TestCa::new("not the API's CA");
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    stranger.write(ca_file.path());
    let d = device();
    let err = enroll(
        &d.store,
        &options(stub.server.url(), ca_file.path(), &d.out, 1),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(stub.server.requests().is_empty());
    assert_nothing_written(&d.out);
}

#[tokio::test]
async fn a_refused_re_enrollment_keeps_the_previous_one() {
    let stub = stub(|_, certificate| vended(201, certificate, &TestCa::new("unused"))).await;
    let d = device();
    enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 1),
    )
    .await
    .unwrap();
    // Another serial on the same device, refused: the old files are replaced only once a new
    // certificate has arrived, so the device keeps a working identity.
    let refusing = self::stub(|_, _| error(403, "invalid_credentials", None)).await;
    let mut other = options(refusing.server.url(), refusing.ca_file.path(), &d.out, 1);
    other.serial = "STUB-2".into();
    assert!(enroll(&d.store, &other).await.is_err());
    assert_eq!(Enrollment::load(&d.out).unwrap().serial, "STUB-1");
}

#[tokio::test]
async fn a_lockout_answered_429_enrollment_locked_is_waited_out_not_final() {
    let stub = stub(|n, certificate| match n {
        0 => error(429, "enrollment_locked", Some(1)),
        _ => vended(201, certificate, &TestCa::new("unused")),
    })
    .await;
    let d = device();
    let started = Instant::now();
    let outcome = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 6),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::Enrolled { new: true, .. }));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
    assert_eq!(stub.server.requests().len(), 2);
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    // The stub's own Date plus 2 s, as an HTTP date; the client measures it against the
    // answer's Date header (hyper adds it), whose resolution is one second.
    let stub = stub(|n, certificate| match n {
        0 => error_with(
            429,
            "throttled",
            Some(httpdate::fmt_http_date(
                std::time::SystemTime::now() + Duration::from_secs(2),
            )),
        ),
        _ => vended(201, certificate, &TestCa::new("unused")),
    })
    .await;
    let d = device();
    let started = Instant::now();
    enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 6),
    )
    .await
    .unwrap();
    // The backoff alone would have waited 10 to 13 ms.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(stub.server.requests().len(), 2);
}

#[tokio::test]
async fn the_binary_reports_a_refusal_in_one_line_and_exits_3() {
    let stub = stub(|_, _| error(403, "invalid_credentials", None)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cvm");
    let token = dir.path().join("token");
    std::fs::write(&token, "one-time-token\n").unwrap();
    let run = run_enroll(
        &enroll_args(&stub, &token, &out),
        &["--insecure-software-key"],
    )
    .await;
    assert_one_line_failure(
        &run,
        "the API refused the enrollment: invalid_credentials (403): stub says invalid_credentials",
    );
    assert_eq!(
        run.status.code(),
        Some(3),
        "refused for good: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("one-time-token"));
    assert_nothing_written(&out);
    let body: serde_json::Value = serde_json::from_slice(&stub.server.requests()[0].body).unwrap();
    assert_eq!(
        body["token"], "one-time-token",
        "the file's newline is not part of it"
    );
}

#[tokio::test]
async fn the_binary_exits_1_on_what_may_work_later() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "one-time-token").unwrap();
    for (status, code) in [
        (500, "internal_error"),
        (503, "service_unavailable"),
        (429, "enrollment_locked"),
        (409, "enrollment_in_progress"),
    ] {
        let stub = stub(move |_, _| error(status, code, Some(0))).await;
        let out = dir.path().join(format!("cvm-{status}-{code}"));
        let run = run_enroll(
            &enroll_args(&stub, &token, &out),
            &["--insecure-software-key", "--max-attempts", "2"],
        )
        .await;
        assert_one_line_failure(&run, &format!("{code} ({status})"));
        assert_eq!(
            run.status.code(),
            Some(1),
            "{status} {code}: {}",
            run.stderr
        );
        assert_eq!(
            stub.server.requests().len(),
            2,
            "{status} {code} is retried"
        );
    }
    // Nothing listening: transient too.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = dir.path().join("cvm-unreachable");
    let run = run_device(
        &[
            "enroll",
            "--url",
            &format!("https://127.0.0.1:{port}"),
            "--serial",
            "STUB-1",
            "--token-file",
            token.to_str().unwrap(),
            "--dir",
            out.to_str().unwrap(),
            "--insecure-software-key",
            "--max-attempts",
            "1",
        ],
        &[],
    )
    .await;
    assert_one_line_failure(&run, "could not reach the API");
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
}

#[tokio::test]
async fn the_binary_exits_2_on_configuration_errors() {
    let stub = stub(|_, certificate| vended(201, certificate, &TestCa::new("unused"))).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "one-time-token").unwrap();
    let out = dir.path().join("cvm");
    let args = enroll_args(&stub, &token, &out);

    // No serial.
    let without_serial: Vec<String> = args
        .iter()
        .filter(|a| *a != "--serial" && *a != "STUB-1")
        .cloned()
        .collect();
    let run = run_enroll(&without_serial, &["--insecure-software-key"]).await;
    assert_one_line_failure(&run, "no serial");
    assert_eq!(run.status.code(), Some(2));

    // A config file that is not TOML, named explicitly.
    let config = dir.path().join("device.toml");
    std::fs::write(&config, "key = [\n").unwrap();
    let mut with_config = vec!["--config".to_owned(), config.to_str().unwrap().to_owned()];
    with_config.extend(args.iter().cloned());
    let run = run_enroll(&with_config, &["--insecure-software-key"]).await;
    assert_one_line_failure(&run, "device.toml");
    assert_eq!(run.status.code(), Some(2));

    // A group that does not exist.
    let run = run_enroll(
        &args,
        &["--insecure-software-key", "--group", "no-such-group-cvm"],
    )
    .await;
    assert_one_line_failure(&run, "no such group");
    assert_eq!(run.status.code(), Some(2));

    // An unknown flag (clap's usage error).
    let run = run_enroll(&args, &["--no-such-flag"]).await;
    assert_eq!(run.status.code(), Some(2));

    assert!(stub.server.requests().is_empty(), "nothing was asked");
    assert!(files_in(&out).is_empty());
}

#[tokio::test]
async fn without_a_key_store_enroll_refuses_to_spend_the_token_on_a_software_key() {
    let stub = stub(|_, certificate| vended(201, certificate, &TestCa::new("unused"))).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "one-time-token").unwrap();
    let out = dir.path().join("cvm");
    let args = enroll_args(&stub, &token, &out);

    let run = run_enroll(&args, &[]).await;
    assert_one_line_failure(&run, "no key store chosen: pass --key zymkey");
    assert!(run.stderr.contains("pkcs11:module="), "{}", run.stderr);
    assert!(
        run.stderr.contains("--insecure-software-key"),
        "{}",
        run.stderr
    );
    assert_eq!(run.status.code(), Some(2));
    assert!(stub.server.requests().is_empty(), "the token was not sent");
    assert!(
        files_in(&out).is_empty(),
        "no key was made: {:?}",
        files_in(&out)
    );

    // Told it is a development run: a key file, with a warning.
    let run = run_enroll(&args, &["--insecure-software-key"]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains("warning: software key") && run.stderr.contains("memory"),
        "{}",
        run.stderr
    );
    assert_eq!(
        files_in(&out),
        ["ca.pem", "certificate.pem", "device.key", "enrollment.json"]
    );
    // A key named in the config is a choice too.
    let other = dir.path().join("cvm-config");
    let config = dir.path().join("device.toml");
    std::fs::write(
        &config,
        format!("key = \"file:{}\"\n", other.join("k.pem").display()),
    )
    .unwrap();
    let mut with_config = vec!["--config".to_owned(), config.to_str().unwrap().to_owned()];
    with_config.extend(enroll_args(&stub, &token, &other));
    let run = run_enroll(&with_config, &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
}
