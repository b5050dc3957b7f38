use std::path::{Path, PathBuf};
use std::process::Command;

use x509_cert::der::DecodePem;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the local stack (make up) and export .local/env, or run make test")
    })
}

/// One vend API under test: the `iot` issuer, and the `acm-pca` one where the stack has it.
pub struct Api {
    pub mode: &'static str,
    pub url: String,
    /// The CA the issued certificates chain to.
    pub device_ca: PathBuf,
}

pub fn apis() -> Vec<Api> {
    let mut apis = vec![Api {
        mode: "iot",
        url: env("CVM_API_URL"),
        device_ca: env("CVM_DEVICE_CA").into(),
    }];
    if let (Ok(url), Ok(ca)) = (
        std::env::var("CVM_PCA_API_URL"),
        std::env::var("CVM_PCA_CA_CERT"),
    ) {
        apis.push(Api {
            mode: "acm-pca",
            url,
            device_ca: ca.into(),
        });
    }
    apis
}

pub fn http() -> reqwest::Client {
    let ca = std::fs::read(env("CVM_API_CA")).unwrap();
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
        .build()
        .unwrap()
}

/// A serial no other test uses, so tests can share one stack and run in parallel.
pub fn unique_serial(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Enrolls through the real admin CLI and returns the token.
pub fn enroll(serial: &str, extra: &[&str]) -> String {
    let out = Command::new(env("CVM_ADMIN"))
        .args(["enroll", "--serial", serial, "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

pub fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub enum KeyType {
    P256,
    Rsa(u32),
}

/// A key and a CSR made by `openssl req -new`, as a device tool would.
pub fn openssl_csr(dir: &Path, cn: &str, key: KeyType) -> (PathBuf, String) {
    let key_path = dir.join(format!("{cn}-{}.key", std::process::id()));
    let k = key_path.to_str().unwrap();
    match key {
        KeyType::P256 => openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            k,
        ]),
        KeyType::Rsa(bits) => openssl(&["genrsa", "-out", k, &bits.to_string()]),
    };
    let csr = openssl(&["req", "-new", "-key", k, "-subj", &format!("/CN={cn}")]);
    (key_path, String::from_utf8(csr).unwrap())
}

pub fn rcgen_csr(cn: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

pub async fn post(client: &reqwest::Client, api: &Api, body: &serde_json::Value) -> (u16, Vec<u8>) {
    post_raw(client, api, body.to_string()).await
}

pub async fn post_raw(client: &reqwest::Client, api: &Api, body: String) -> (u16, Vec<u8>) {
    let r = client
        .post(format!("{}/v1/certificates", api.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

pub fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

pub async fn iot() -> aws_sdk_iot::Client {
    aws_sdk_iot::Client::new(&cvm_aws::load_sdk_config().await)
}

/// Every certificate in IoT whose subject CN is `cn`, with its status.
pub async fn certificates_for(iot: &aws_sdk_iot::Client, cn: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut marker = None;
    loop {
        let page = iot
            .list_certificates()
            .set_marker(marker.clone())
            .page_size(250)
            .send()
            .await
            .unwrap();
        for c in page.certificates() {
            let id = c.certificate_id().unwrap();
            // Other tests run meanwhile, and some delete certificates (undo, sweep): one
            // listed a moment ago may be gone, which is not this serial's.
            let d = match iot.describe_certificate().certificate_id(id).send().await {
                Ok(d) => d,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_resource_not_found_exception()) =>
                {
                    continue
                }
                Err(e) => panic!("DescribeCertificate {id}: {e:?}"),
            };
            let desc = d.certificate_description().unwrap();
            let pem = desc.certificate_pem().unwrap();
            let cert = x509_cert::Certificate::from_pem(pem.as_bytes()).unwrap();
            let subject_cn = cert
                .tbs_certificate()
                .subject()
                .common_name()
                .unwrap()
                .map(|s| s.value().into_owned());
            if subject_cn.as_deref() == Some(cn) {
                found.push((id.to_owned(), desc.status().unwrap().as_str().to_owned()));
            }
        }
        marker = page.next_marker().map(str::to_owned);
        if marker.is_none() {
            return found;
        }
    }
}

/// A free port on 127.0.0.1 (released before use: a test spawns its server on it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A vend service (`vend-local`, the binary `make up` builds) started by a test, with the
/// environment `up.sh` gives it but its own AWS endpoint (e.g. a fault proxy) and port.
/// Killed when dropped.
pub struct VendService {
    child: std::process::Child,
    pub api: Api,
    pub log: PathBuf,
}

impl Drop for VendService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vend-local` next to `cvm-admin` (both built by `make up`), or `CVM_VEND_LOCAL`.
fn vend_local_binary() -> PathBuf {
    std::env::var("CVM_VEND_LOCAL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(&env("CVM_ADMIN")).with_file_name("vend-local"))
}

impl VendService {
    /// `mode` is `iot` or `acm-pca`; `extra_env` is added last (and wins). A service that
    /// exits while starting (its free port taken meanwhile) is started again on another.
    pub async fn spawn(
        mode: &'static str,
        aws_endpoint: &str,
        log: PathBuf,
        extra_env: &[(&str, &str)],
    ) -> VendService {
        let pki = PathBuf::from(env("CVM_API_CA"))
            .parent()
            .unwrap()
            .to_path_buf();
        let device_ca: PathBuf = match mode {
            "iot" => env("CVM_DEVICE_CA").into(),
            "acm-pca" => env("CVM_PCA_CA_CERT").into(),
            other => panic!("unknown vend mode {other}"),
        };
        let mut last_exit = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut command = Command::new(vend_local_binary());
            command
                .env("AWS_ENDPOINT_URL", aws_endpoint)
                .env("CVM_TABLE_NAME", env("CVM_TABLE_NAME"))
                .env("CVM_DEFAULT_POLICY_NAME", env("CVM_DEFAULT_POLICY_NAME"))
                .env("CVM_CA_CERTIFICATES_FILE", &device_ca)
                .env("CVM_ROLE_ALIAS", "cvm-device-role-alias")
                .env("CVM_LOCAL_LISTEN", format!("127.0.0.1:{port}"))
                .env("CVM_LOCAL_TLS_CERT", pki.join("api-server.pem"))
                .env("CVM_LOCAL_TLS_KEY", pki.join("api-server.key"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            if mode == "acm-pca" {
                command
                    .env("CVM_ISSUER", "acm-pca")
                    .env("CVM_PCA_ARN", env("CVM_PCA_ARN"));
            }
            for (k, v) in extra_env {
                command.env(k, v);
            }
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e} (run make up)", vend_local_binary().display()));
            let mut service = VendService {
                child,
                api: Api {
                    mode,
                    url: format!("https://127.0.0.1:{port}"),
                    device_ca: device_ca.clone(),
                },
                log: log.clone(),
            };
            match service.wait_ready().await {
                Ok(()) => return service,
                Err(exit) => last_exit = exit,
            }
        }
        panic!("vend-local did not start: {last_exit}");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = http();
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!(
                    "exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            if client
                .get(format!("{}/v1/certificates", self.api.url))
                .send()
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("vend-local did not come up on {}", self.api.url);
    }

    /// The service's log lines at WARN or above (JSON lines from tracing).
    pub fn warnings(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
            .map(str::to_owned)
            .collect()
    }
}
