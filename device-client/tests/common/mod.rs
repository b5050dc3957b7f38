//! What the device client's integration tests share: the stand-in Zymkey library, SoftHSM2
//! tokens, a test PKI, and a scriptable HTTPS server on 127.0.0.1.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cvm_device::KeyStore;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

pub const DEVICE_BIN: &str = env!("CARGO_BIN_EXE_cvm-device");
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const TOKEN_PIN: &str = "4321";

// ---------------------------------------------------------------------------------------------
// The stand-in Zymkey library

/// `libzk_app_utils.so` built from `tests/zymkey-standin/zk_standin.c`, once per source
/// version (test processes running at once each build to a private name, then rename).
pub fn standin_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        use sha2::Digest;
        let source =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zymkey-standin/zk_standin.c");
        let hash = sha2::Sha256::digest(std::fs::read(&source).unwrap());
        let version: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("zymkey-standin-{version}"));
        let lib = dir.join("libzk_app_utils.so");
        if lib.exists() {
            return lib;
        }
        std::fs::create_dir_all(&dir).unwrap();
        let partial = dir.join(format!("build-{}.so", std::process::id()));
        let out = Command::new("cc")
            .args([
                "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
            ])
            .arg(&partial)
            .arg(&source)
            .arg("-lcrypto")
            .output()
            .expect("cc (gcc) is needed for the stand-in Zymkey library");
        assert!(
            out.status.success(),
            "compiling the stand-in Zymkey library failed (is libssl-dev installed? \
             tests/local-stack/install-device.sh installs it):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&partial, &lib).unwrap();
        lib
    })
}

/// The in-process stand-in module's key directory (`ZK_STANDIN_DIR`).
pub fn standin_module_dir() -> &'static Path {
    &process_env().zymkey_dir
}

/// What the C libraries loaded into a test process read from its environment: the stand-in's
/// `ZK_STANDIN_DIR` and SoftHSM2's `SOFTHSM2_CONF`. Both are set once, together, before any
/// test uses either library (C code reads the environment without Rust's lock, so it must not
/// change while they run). The directories of test processes that have ended are removed.
struct ProcessEnv {
    zymkey_dir: PathBuf,
    softhsm: SoftHsm,
}

fn process_env() -> &'static ProcessEnv {
    static ENV: OnceLock<ProcessEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("test-env-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let root = parent.join(format!("test-env-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let zymkey_dir = root.join("zymkey");
        std::fs::create_dir_all(&zymkey_dir).unwrap();
        let softhsm = SoftHsm::in_dir(&root.join("softhsm"));
        std::env::set_var("ZK_STANDIN_DIR", &zymkey_dir);
        std::env::set_var("SOFTHSM2_CONF", &softhsm.conf);
        ProcessEnv {
            zymkey_dir,
            softhsm,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// SoftHSM2

/// A SoftHSM2 configuration with its own token directory.
pub struct SoftHsm {
    pub root: PathBuf,
    pub conf: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

impl SoftHsm {
    /// In a temporary directory, removed when this is dropped.
    pub fn new() -> Self {
        let temporary = tempfile::tempdir().unwrap();
        let mut hsm = Self::in_dir(temporary.path());
        hsm._temporary = Some(temporary);
        hsm
    }

    /// In `root`, which the caller cleans up.
    pub fn in_dir(root: &Path) -> Self {
        let tokens = root.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = root.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        Self {
            root: root.to_owned(),
            conf,
            _temporary: None,
        }
    }

    /// A new token labelled `label` with the user PIN [`TOKEN_PIN`].
    pub fn init_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", "87654321", "--pin", TOKEN_PIN])
            .output()
            .expect("softhsm2-util (package softhsm2) is needed");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn pin_file(&self) -> PathBuf {
        let path = self.root.join("pin");
        std::fs::write(&path, format!("{TOKEN_PIN}\n")).unwrap();
        path
    }

    pub fn spec(&self, token: &str, key: &str) -> String {
        format!(
            "pkcs11:module={SOFTHSM_MODULE};token={token};key={key};pin-file={}",
            self.pin_file().display()
        )
    }
}

/// The in-process SoftHSM2: one configuration per test process (the module reads
/// `SOFTHSM2_CONF` once, from the process environment), used by one test at a time.
pub fn softhsm() -> (&'static SoftHsm, MutexGuard<'static, ()>) {
    static LOCK: Mutex<()> = Mutex::new(());
    assert!(
        Path::new(SOFTHSM_MODULE).exists(),
        "{SOFTHSM_MODULE} is missing: run tests/local-stack/install-device.sh (softhsm2)"
    );
    let hsm = &process_env().softhsm;
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    (hsm, guard)
}

// ---------------------------------------------------------------------------------------------
// Keys and certificates

/// Checks a raw `r || s` signature over `digest` against a SEC1 public key.
pub fn verify_raw(public_key: &[u8; 65], digest: &[u8; 32], raw: &[u8; 64]) -> bool {
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(public_key).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(raw).unwrap();
    key.verify_prehash(digest, &sig).is_ok()
}

/// Signs a few digests with the store and checks each signature.
pub fn assert_signs(store: &dyn KeyStore) {
    let public = store.public_key().unwrap();
    for i in 0..4u8 {
        let digest = [i.wrapping_mul(37); 32];
        let sig = store.sign_digest(&digest).unwrap();
        assert!(
            verify_raw(&public, &digest, &sig),
            "signature {i} does not verify"
        );
    }
}

/// A public point as rcgen sees it, to certify a key that lives in a store.
pub struct Point(pub [u8; 65]);

impl PublicKeyData for Point {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A test certificate authority.
pub struct TestCa {
    pub pem: String,
    params: CertificateParams,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Self { pem, params, key }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// A server certificate for 127.0.0.1 and localhost, with its key (PEM).
    pub fn server(&self) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate with CN `name` for a public point.
    pub fn client_for(&self, point: [u8; 65], name: &str) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .signed_by(&Point(point), &self.issuer())
            .unwrap()
            .pem()
    }

    /// A certificate for the key of a PEM CSR, as a vending API would issue it.
    pub fn certify_csr(&self, csr_pem: &str) -> String {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        csr.signed_by(&self.issuer()).unwrap().pem()
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).unwrap();
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
            .unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS server config presenting a certificate from `ca`; with `client_ca`, client
/// certificates from it are required.
pub fn server_tls(ca: &TestCa, client_ca: Option<&TestCa>) -> Arc<rustls::ServerConfig> {
    let (cert, key) = ca.server();
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = match client_ca {
        Some(client_ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(client_ca.roots()),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config.with_single_cert(chain, key).unwrap())
}

// ---------------------------------------------------------------------------------------------
// A scriptable HTTPS server

/// What the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query, as sent (still percent-encoded).
    pub target: String,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
    /// The client's certificate (DER), when it presented one.
    pub client_certificate: Option<Vec<u8>>,
}

/// What the server does with a request.
pub enum Reply {
    Respond {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// Close the connection without answering (a response lost on the way).
    Drop,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Reply::Respond {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
        }
    }
}

pub type Handler = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

pub struct TestServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(tls: Arc<rustls::ServerConfig>, handler: Handler) -> Self {
        use http_body_util::BodyExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, handler, log) = (acceptor.clone(), handler.clone(), log.clone());
                tokio::spawn(async move {
                    // A refused client certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_certificate = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec());
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let (handler, log, client_certificate) =
                                (handler.clone(), log.clone(), client_certificate.clone());
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = match body.collect().await {
                                    Ok(collected) => collected.to_bytes().to_vec(),
                                    Err(e) => return Err(std::io::Error::other(e.to_string())),
                                };
                                let received = Received {
                                    method: parts.method.to_string(),
                                    target: parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    headers: parts.headers,
                                    body,
                                    client_certificate,
                                };
                                let reply = handler(&received);
                                log.lock().unwrap().push(received);
                                match reply {
                                    Reply::Respond {
                                        status,
                                        headers,
                                        body,
                                    } => {
                                        let mut response =
                                            hyper::Response::builder().status(status);
                                        for (name, value) in headers {
                                            response = response.header(name, value);
                                        }
                                        Ok::<_, std::io::Error>(
                                            response
                                                .body(http_body_util::Full::new(
                                                    hyper::body::Bytes::from(body),
                                                ))
                                                .unwrap(),
                                        )
                                    }
                                    Reply::Drop => {
                                        Err(std::io::Error::other("response dropped on purpose"))
                                    }
                                }
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// A stub vending API

pub struct Stub {
    pub ca: Arc<TestCa>,
    pub server: TestServer,
    pub ca_file: tempfile::NamedTempFile,
}

/// A stub API answering the n-th request (from 0) with `script(n, certificate)`, where
/// `certificate` is a certificate for the request's CSR.
pub async fn stub(script: impl Fn(usize, String) -> Reply + Send + Sync + 'static) -> Stub {
    let ca = Arc::new(TestCa::new("stub API CA"));
    let count = AtomicUsize::new(0);
    let issuer = ca.clone();
    let handler: Handler = Arc::new(move |request: &Received| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        let certificate = issuer.certify_csr(body["csr"].as_str().unwrap());
        script(n, certificate)
    });
    let server = TestServer::start(server_tls(&ca, None), handler).await;
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    ca.write(ca_file.path());
    Stub {
        ca,
        server,
        ca_file,
    }
}

pub fn vended(status: u16, certificate: String, ca: &TestCa) -> Reply {
    Reply::json(
        status,
        json!({
            "thingName": "thing-STUB-1",
            "certificateId": "c0ffee",
            "certificateArn": "arn:aws:iot:us-east-1:123456789012:cert/c0ffee",
            "certificatePem": certificate,
            "caCertificates": [ca.pem],
            "endpoints": {"data": "data.example.com", "credentials": "creds.example.com"},
            "policyName": "cvm-device-default",
            "publicKeyFingerprint": "ignored",
            "issuedAt": "2030-01-01T00:00:00Z",
            "roleAlias": "cvm-device-role-alias"
        }),
    )
}

pub fn error(status: u16, code: &str, retry_after: Option<u64>) -> Reply {
    error_with(status, code, retry_after.map(|s| s.to_string()))
}

/// An error answer with `Retry-After: <value>` as given (seconds or an HTTP date).
pub fn error_with(status: u16, code: &str, retry_after: Option<String>) -> Reply {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(value) = retry_after {
        headers.push(("retry-after", value));
    }
    Reply::Respond {
        status,
        headers,
        body: json!({"code": code, "message": format!("stub says {code}")}).to_string(),
    }
}

/// The arguments of `cvm-device enroll` against a stub, writing to `out`.
pub fn enroll_args(stub: &Stub, token: &Path, out: &Path) -> Vec<String> {
    [
        "enroll",
        "--url",
        &stub.server.url(),
        "--serial",
        "STUB-1",
        "--token-file",
        token.to_str().unwrap(),
        "--ca",
        stub.ca_file.path().to_str().unwrap(),
        "--dir",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub async fn run_enroll(args: &[String], extra: &[&str]) -> Run {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    run_device(&all, &[]).await
}

/// After a failure: the key and nothing else.
pub fn assert_nothing_written(out: &Path) {
    assert_eq!(files_in(out), vec!["device.key".to_owned()]);
}

// ---------------------------------------------------------------------------------------------
// Running the binary

pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
}

/// Runs `cvm-device` with `args`, no config file of the machine's, and `env`.
pub async fn run_device(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_wrapped(&[], args, env).await
}

/// Runs `cvm-device` under `wrapper` (e.g. `faketime`, `setpriv`), as `run_device` does.
pub async fn run_wrapped(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut command = tokio::process::Command::new(program);
            command.args(wrapper_args).arg(DEVICE_BIN);
            command
        }
        None => tokio::process::Command::new(DEVICE_BIN),
    };
    command
        .args(args)
        .env("CVM_CONFIG", "/dev/null")
        .env_remove("CVM_API_URL")
        .env_remove("CVM_API_CA")
        .env_remove("CVM_KEY")
        .env_remove("CVM_ENROLL_TOKEN")
        .env_remove("CVM_SERIAL")
        .env_remove("CVM_PKCS11_PIN")
        .env_remove("ZK_STANDIN_DIR")
        .env_remove("SOFTHSM2_CONF");
    for (name, value) in env {
        command.env(name, value);
    }
    let started = std::time::Instant::now();
    let out = command.output().await.unwrap();
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// A failed run that said why in one line on stderr and nothing on stdout (besides progress:
/// retries, waits for the clock, and warnings).
pub fn assert_one_line_failure(run: &Run, expected: &str) {
    assert!(!run.status.success(), "expected a failure: {}", run.stderr);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| {
            !l.contains("retrying")
                && !l.contains("; waiting up to ")
                && !l.starts_with("cvm-device: warning:")
        })
        .collect();
    assert_eq!(lines.len(), 1, "one line expected: {:?}", run.stderr);
    assert!(lines[0].starts_with("cvm-device: "), "{}", lines[0]);
    assert!(
        lines[0].contains(expected),
        "{expected:?} not in {:?}",
        lines[0]
    );
    assert!(run.stdout.is_empty(), "stdout: {}", run.stdout);
}

/// The names in `dir`, sorted (empty if it does not exist).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
