//! Enrollment on a board whose clock is not set (no RTC: it boots in 1970, or at the last
//! shutdown time): the client waits a bounded time for time synchronization, going on as soon
//! as the clock is set, else failing with the transient status 1; an answer whose `Date` is
//! far from the clock is not acted on. In process with an injectable clock, and as a process
//! with its clock set back by libfaketime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use cvm_device::clock::{Clock, ClockCheck};
use cvm_device::enroll::{enroll, Backoff, EnrollError, EnrollOptions, Outcome};
use cvm_device::exit::{ExitStatus, Failure};
use cvm_device::files::Sharing;
use cvm_device::FileKeyStore;

/// The real time shifted by a number of seconds that a test (an "NTP client") changes.
struct ShiftedClock(AtomicI64);

impl ShiftedClock {
    /// Shifted back to `seconds` after 1970: a board without an RTC.
    fn at_boot(seconds: u64) -> Arc<Self> {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Arc::new(Self(AtomicI64::new(seconds as i64 - real as i64)))
    }
    fn shifted(seconds: i64) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(seconds)))
    }
    /// Time synchronization: the real time from now on.
    fn synchronize(&self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> SystemTime {
        let shift = self.0.load(Ordering::SeqCst);
        let magnitude = Duration::from_secs(shift.unsigned_abs());
        if shift >= 0 {
            SystemTime::now() + magnitude
        } else {
            SystemTime::now() - magnitude
        }
    }
}

const DAY: i64 = 86_400;

struct Device {
    _dir: tempfile::TempDir,
    out: PathBuf,
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

fn options(stub: &Stub, out: &Path, clock: Arc<dyn Clock>, max_wait: Duration) -> EnrollOptions {
    EnrollOptions {
        url: stub.server.url(),
        serial: "STUB-1".into(),
        token: "one-time-token".to_owned().into(),
        ca: Some(stub.ca_file.path().to_owned()),
        out: out.to_owned(),
        max_attempts: 3,
        backoff: Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
        },
        clock: ClockCheck::new(
            clock,
            cvm_device::clock::build_time(),
            max_wait,
            Duration::from_millis(20),
        ),
        sharing: Sharing::PRIVATE,
    }
}

async fn issuing_stub() -> Stub {
    stub(|_, certificate| vended(201, certificate, &TestCa::new("unused"))).await
}

#[tokio::test]
async fn a_clock_in_1970_waits_then_fails_transiently_without_asking() {
    let stub = issuing_stub().await;
    let d = device();
    let clock = ShiftedClock::at_boot(5);
    let started = Instant::now();
    let err = enroll(
        &d.store,
        &options(&stub, &d.out, clock, Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(matches!(err, EnrollError::Clock(_)), "{err}");
    let message = err.to_string();
    // The clock ticks from 00:00:05 while the test waits.
    assert!(
        message.contains("the system clock says 1970-01-01T00:00:0"),
        "{message}"
    );
    assert!(
        message.contains("before this program was built"),
        "{message}"
    );
    assert_eq!(
        Failure::from(err).exit_status(),
        ExitStatus::Transient,
        "systemd runs it again"
    );
    assert!(stub.server.requests().is_empty(), "the token was not sent");
    assert_nothing_written(&d.out);
}

#[tokio::test]
async fn enrollment_goes_on_as_soon_as_time_sync_sets_the_clock() {
    let stub = issuing_stub().await;
    let d = device();
    let clock = ShiftedClock::at_boot(5);
    let ntp = tokio::spawn({
        let clock = clock.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            clock.synchronize();
        }
    });
    let started = Instant::now();
    let outcome = enroll(
        &d.store,
        &options(&stub, &d.out, clock, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::Enrolled { new: true, .. }));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(stub.server.requests().len(), 1);
    ntp.await.unwrap();
}

#[tokio::test]
async fn an_answer_dated_far_from_the_clock_is_not_acted_on() {
    // Set after the build, but three days off: the API's Date (hyper adds the real time)
    // shows it. The certificate in that answer is not stored.
    let stub = issuing_stub().await;
    let d = device();
    let err = enroll(
        &d.store,
        &options(
            &stub,
            &d.out,
            ShiftedClock::shifted(3 * DAY),
            Duration::from_millis(200),
        ),
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("3 d 0 h ahead of the server's"),
        "{message}"
    );
    assert_eq!(Failure::from(err).exit_status(), ExitStatus::Transient);
    assert_eq!(stub.server.requests().len(), 1);
    assert_nothing_written(&d.out);
}

#[tokio::test]
async fn once_the_clock_agrees_with_the_servers_the_answer_is_asked_again() {
    // A board whose fake-hwclock restored last week's time: after the build, far behind the
    // API's Date. The first certificate is not stored; once the clock is set, the same key
    // asks again and gets it re-delivered (200).
    let first = Arc::new(Mutex::new(None::<String>));
    let seen = first.clone();
    let stub = stub(move |n, certificate| {
        let mut first = seen.lock().unwrap();
        if n == 0 {
            *first = Some(certificate.clone());
            vended(201, certificate, &TestCa::new("unused"))
        } else {
            vended(200, first.clone().unwrap(), &TestCa::new("unused"))
        }
    })
    .await;
    let d = device();
    // A shift that keeps the clock after the build date (no wait before asking): a week
    // behind would fall before a fresh build, so ten minutes behind.
    let clock = ShiftedClock::shifted(-600);
    let ntp = tokio::spawn({
        let clock = clock.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            clock.synchronize();
        }
    });
    let outcome = enroll(
        &d.store,
        &options(&stub, &d.out, clock, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::Enrolled { new: false, .. }));
    assert_eq!(stub.server.requests().len(), 2);
    let stored = std::fs::read_to_string(d.out.join("certificate.pem")).unwrap();
    assert_eq!(Some(stored), first.lock().unwrap().clone());
    ntp.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The binary with its clock set back by libfaketime

/// libfaketime's preload library, installed by tests/local-stack/install-device.sh (faketime).
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("libfaketime is missing: run tests/local-stack/install-device.sh (package faketime)")
    })
}

/// Tokio's timers and the bounded wait use the monotonic clock: only the wall clock is faked,
/// as on a board whose wall clock was never set.
const REAL_MONOTONIC: (&str, &str) = ("FAKETIME_DONT_FAKE_MONOTONIC", "1");

struct Setup {
    stub: Stub,
    _dir: tempfile::TempDir,
    token: PathBuf,
    out: PathBuf,
}

async fn setup() -> Setup {
    libfaketime();
    let stub = issuing_stub().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "one-time-token").unwrap();
    let out = dir.path().join("cvm");
    Setup {
        stub,
        _dir: dir,
        token,
        out,
    }
}

impl Setup {
    fn args<'a>(&'a self, owned: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
        let mut args: Vec<&str> = owned.iter().map(String::as_str).collect();
        args.extend_from_slice(&["--insecure-software-key", "--max-attempts", "1"]);
        args.extend_from_slice(extra);
        args
    }
}

#[tokio::test]
async fn under_faketime_in_1970_the_binary_waits_then_exits_1() {
    let s = setup().await;
    let owned = enroll_args(&s.stub, &s.token, &s.out);
    let run = run_wrapped(
        &["faketime", "1970-01-02 00:00:00"],
        &s.args(&owned, &["--time-sync-wait", "1"]),
        &[REAL_MONOTONIC],
    )
    .await;
    assert_one_line_failure(&run, "the system clock says 1970-01-02T00:00:0");
    assert!(
        run.stderr.contains("before this program was built")
            && run
                .stderr
                .contains("waiting up to 1 s for time synchronization")
            && run.stderr.contains("systemd-time-wait-sync.service"),
        "{}",
        run.stderr
    );
    assert_eq!(run.status.code(), Some(1), "transient: {}", run.stderr);
    assert!(run.elapsed >= Duration::from_secs(1), "{:?}", run.elapsed);
    assert!(
        s.stub.server.requests().is_empty(),
        "the token was not sent"
    );
    assert_nothing_written(&s.out);
}

#[tokio::test]
async fn under_faketime_the_binary_goes_on_when_the_clock_is_set() {
    // libfaketime reads the fake time from a file on every call: the test "synchronizes" the
    // clock by rewriting it while the binary waits.
    let s = setup().await;
    let time_file = s.out.with_file_name("faketime");
    std::fs::write(&time_file, "@1970-01-02 00:00:00\n").unwrap();
    let owned = enroll_args(&s.stub, &s.token, &s.out);
    let preload = libfaketime();
    let env = [
        REAL_MONOTONIC,
        ("LD_PRELOAD", preload.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", time_file.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
    ];
    let args = s.args(&owned, &["--time-sync-wait", "30"]);
    let ntp = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        std::fs::write(&time_file, "+0\n").unwrap();
    };
    let (run, ()) = tokio::join!(run_device(&args, &env), ntp);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains("the system clock says 1970-01-02")
            && run.stderr.contains("the system clock is set now"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("new certificate"), "{}", run.stdout);
    assert_eq!(s.stub.server.requests().len(), 1);
}

#[tokio::test]
async fn under_faketime_three_days_ahead_the_apis_date_shows_it() {
    let s = setup().await;
    let owned = enroll_args(&s.stub, &s.token, &s.out);
    let run = run_wrapped(
        &["faketime", "-f", "+3d"],
        &s.args(&owned, &["--time-sync-wait", "1"]),
        &[REAL_MONOTONIC],
    )
    .await;
    assert_one_line_failure(&run, "ahead of the server's");
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert_eq!(s.stub.server.requests().len(), 1);
    assert_nothing_written(&s.out);
}
