//! The documented way to let a service user run `cvm-device credentials` as an AWS
//! `credential_process`: root enrolls with `group = "..."` in the config (under the unit's
//! umask 077), which makes the enrollment directory 0750 and its files 0640, group-owned; a
//! user in that group then gets credentials, a user outside it does not, and without `group`
//! everything is owner-only again. Runs the binary as throwaway system users (useradd, setpriv),
//! so it needs root, as in CI; elsewhere it says it is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use serde_json::json;

/// A system group and two system users, one in the group and one not; removed when dropped.
/// Names carry the test process's id, so the leftovers of a killed run can be recognized.
struct Accounts {
    group: String,
    gid: u32,
    member: (String, u32, u32),
    outsider: (String, u32, u32),
}

const PREFIX: &str = "cvmt";

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn id(flag: &str, user: &str) -> u32 {
    run("id", &[flag, user]).parse().unwrap()
}

/// Accounts of test processes that are gone (a run killed before its cleanup).
fn remove_stale_accounts() {
    let stale = |line: &str| -> Option<String> {
        let name = line.split(':').next()?;
        let pid: String = name
            .strip_prefix(PREFIX)?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        (!pid.is_empty() && !Path::new("/proc").join(&pid).exists()).then(|| name.to_owned())
    };
    for user in std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(stale)
    {
        let _ = Command::new("userdel").arg(&user).output();
    }
    for group in std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(stale)
    {
        let _ = Command::new("groupdel").arg(&group).output();
    }
}

impl Accounts {
    fn create() -> Self {
        remove_stale_accounts();
        let pid = std::process::id();
        let group = format!("{PREFIX}{pid}g");
        run("groupadd", &["--system", &group]);
        let gid: u32 = run("getent", &["group", &group])
            .split(':')
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        let user = |suffix: &str, groups: &[&str]| {
            let name = format!("{PREFIX}{pid}{suffix}");
            let mut args = vec![
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
            ];
            for g in groups {
                args.extend(["--groups", g]);
            }
            args.push(&name);
            run("useradd", &args);
            let (uid, gid) = (id("-u", &name), id("-g", &name));
            (name, uid, gid)
        };
        let member = user("a", &[&group]);
        let outsider = user("b", &[]);
        Self {
            group,
            gid,
            member,
            outsider,
        }
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for (user, ..) in [&self.member, &self.outsider] {
            let _ = Command::new("userdel").arg(user).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

/// `setpriv` arguments that run a command as `user`, with its groups.
fn as_user((_, uid, gid): &(String, u32, u32)) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--init-groups".into(),
    ]
}

fn mode_and_gid(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.permissions().mode() & 0o777, meta.gid())
}

/// A vending API that certifies the CSR with `device_ca` and points at `provider`, and the
/// credentials provider itself (mTLS, device certificates from `device_ca` only).
struct Cloud {
    api: TestServer,
    api_ca_file: tempfile::NamedTempFile,
    provider: TestServer,
}

const THING: &str = "thing-svc";
const ROLE_ALIAS: &str = "svc-role-alias";

async fn cloud() -> Cloud {
    let device_ca = Arc::new(TestCa::new("device CA"));
    let endpoint_ca = Arc::new(TestCa::new("endpoint CA"));
    let api_ca = TestCa::new("API CA");

    let provider_handler: Handler = Arc::new(|r: &Received| {
        let thing = r
            .headers
            .get("x-amzn-iot-thingname")
            .and_then(|v| v.to_str().ok());
        if r.target != format!("/role-aliases/{ROLE_ALIAS}/credentials") || thing != Some(THING) {
            return Reply::json(403, json!({"message": "Access Denied"}));
        }
        Reply::json(
            200,
            json!({"credentials": {
                "accessKeyId": "ASIASERVICEUSER",
                "secretAccessKey": "secret",
                "sessionToken": "session",
                "expiration": "2031-06-01T12:34:56Z"
            }}),
        )
    });
    let provider =
        TestServer::start(server_tls(&endpoint_ca, Some(&device_ca)), provider_handler).await;
    let provider_addr = provider.addr.to_string();

    let (issuer, trust) = (device_ca.clone(), endpoint_ca.clone());
    let api_handler: Handler = Arc::new(move |r: &Received| {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        Reply::json(
            201,
            json!({
                "thingName": THING,
                "certificateId": "c0ffee",
                "certificateArn": "arn:aws:iot:us-east-1:123456789012:cert/c0ffee",
                "certificatePem": issuer.certify_csr(body["csr"].as_str().unwrap()),
                "caCertificates": [trust.pem],
                "endpoints": {"data": provider_addr, "credentials": provider_addr},
                "policyName": "cvm-device-default",
                "issuedAt": "2030-01-01T00:00:00Z",
                "roleAlias": ROLE_ALIAS
            }),
        )
    });
    let api = TestServer::start(server_tls(&api_ca, None), api_handler).await;
    let api_ca_file = tempfile::NamedTempFile::new().unwrap();
    api_ca.write(api_ca_file.path());
    // Readable by the users: only root reads it, but its directory must not be in the way.
    std::fs::set_permissions(api_ca_file.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    Cloud {
        api,
        api_ca_file,
        provider,
    }
}

/// /etc/cvm/device.toml as the README has it, for this test's directories.
fn write_config(path: &Path, cloud: &Cloud, state: &Path, token: &Path, group: Option<&str>) {
    let group = group
        .map(|g| format!("group = \"{g}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        path,
        format!(
            "dir = \"{}\"\n{group}\n[enroll]\nurl = \"{}\"\nserial = \"SVC-1\"\n\
             token_file = \"{}\"\napi_ca = \"{}\"\n",
            state.display(),
            cloud.api.url(),
            token.display(),
            cloud.api_ca_file.path().display()
        ),
    )
    .unwrap();
}

/// Root runs `enroll` as the unit does: umask 077.
async fn enroll_as_root(config: &Path) -> Run {
    run_wrapped(
        &["sh", "-c", "umask 077 && exec \"$0\" \"$@\""],
        &[
            "--config",
            config.to_str().unwrap(),
            "enroll",
            "--insecure-software-key",
        ],
        &[],
    )
    .await
}

async fn credentials_as(user: &(String, u32, u32), config: &Path) -> Run {
    let wrapper = as_user(user);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    run_wrapped(
        &wrapper,
        &["--config", config.to_str().unwrap(), "credentials"],
        &[],
    )
    .await
}

#[tokio::test]
async fn a_service_user_in_the_configured_group_runs_credentials() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "skipped: running the client as throwaway users needs root (useradd, setpriv); \
             CI runs as root"
        );
        return;
    }
    let accounts = Accounts::create();
    let cloud = cloud().await;

    // /etc/cvm (0750 root:group) with device.toml (0640 root:group) and the token (0600
    // root); the state directory's parent is traversable, as /var/lib is.
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::os::unix::fs::chown(&etc, None, Some(accounts.gid)).unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o750)).unwrap();
    let token = etc.join("enroll-token");
    std::fs::write(&token, "one-time-token").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = etc.join("device.toml");
    let state: PathBuf = root.path().join("state/cvm");
    write_config(&config, &cloud, &state, &token, Some(&accounts.group));
    std::os::unix::fs::chown(&config, None, Some(accounts.gid)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();

    let enrolled = enroll_as_root(&config).await;
    assert!(enrolled.status.success(), "{}", enrolled.stderr);
    assert_eq!(mode_and_gid(&state), (0o750, accounts.gid));
    for name in ["certificate.pem", "ca.pem", "enrollment.json", "device.key"] {
        assert_eq!(
            mode_and_gid(&state.join(name)),
            (0o640, accounts.gid),
            "{name}"
        );
    }
    assert_eq!(mode_and_gid(&token).0, 0o600, "the token stays root's");

    // The member: credentials, as the AWS SDK would run it.
    let run = credentials_as(&accounts.member, &config).await;
    assert!(run.status.success(), "{}", run.stderr);
    let document: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(document["AccessKeyId"], "ASIASERVICEUSER");
    assert_eq!(cloud.provider.requests().len(), 1);

    // Someone else: the configuration is not readable, and that is an error, not skipped.
    let run = credentials_as(&accounts.outsider, &config).await;
    assert_one_line_failure(&run, "Permission denied");
    assert!(run.stderr.contains("device.toml"), "{}", run.stderr);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);

    // Even a config the outsider can read does not open the enrollment to it.
    let open_config = root.path().join("open.toml");
    write_config(&open_config, &cloud, &state, &token, Some(&accounts.group));
    std::fs::set_permissions(&open_config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = credentials_as(&accounts.outsider, &open_config).await;
    assert_one_line_failure(&run, "Permission denied");
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert_eq!(cloud.provider.requests().len(), 1);

    // Without `group`, enroll (already enrolled, nothing asked) makes everything owner-only
    // again, the key included, and the member is locked out.
    write_config(&config, &cloud, &state, &token, None);
    let again = enroll_as_root(&config).await;
    assert!(again.status.success(), "{}", again.stderr);
    assert!(
        again.stdout.contains("already enrolled"),
        "{}",
        again.stdout
    );
    assert_eq!(mode_and_gid(&state).0, 0o700);
    for name in ["certificate.pem", "ca.pem", "enrollment.json", "device.key"] {
        assert_eq!(mode_and_gid(&state.join(name)).0, 0o600, "{name}");
    }
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = credentials_as(&accounts.member, &config).await;
    assert_one_line_failure(&run, "Permission denied");
    assert_eq!(cloud.provider.requests().len(), 1);
}

#[tokio::test]
async fn a_shared_key_file_is_accepted_only_with_its_group_configured() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to give files to another group");
        return;
    }
    use cvm_device::files::Sharing;
    use cvm_device::FileKeyStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.key");
    // A group other than root's: the daemon group exists on Debian (gid 1).
    let group = Sharing::resolve("daemon").unwrap();
    FileKeyStore::open_or_create(&path, group).unwrap();
    assert_eq!(mode_and_gid(&path), (0o640, 1));
    assert!(FileKeyStore::open(&path, group).is_ok());
    let err = FileKeyStore::open(&path, Sharing::PRIVATE)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("lets others read the private key"), "{err}");
    let other = Sharing::with_group(2);
    let err = FileKeyStore::open(&path, other).err().unwrap().to_string();
    assert!(err.contains("lets others read the private key"), "{err}");
}
