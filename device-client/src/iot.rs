//! What the device does with its identity, over mutual TLS with AWS IoT: get temporary AWS
//! credentials from the credentials provider (`credential_process`), and publish a message
//! over HTTPS.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::tls::{error_chain, https_base, one_line};

#[derive(Debug, thiserror::Error)]
pub enum IotError {
    #[error("{0}")]
    Invalid(String),
    #[error("could not reach {url}: {message}")]
    Network { url: String, message: String },
    #[error("{what} refused the request: {status}: {message}")]
    Refused {
        what: &'static str,
        status: u16,
        message: String,
    },
    #[error("{what} answered something unexpected: {message}")]
    InvalidResponse { what: &'static str, message: String },
}

/// The message of an AWS error body (`{"message": ...}`), or the start of the body.
fn message_of(body: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect());
    one_line(&message)
}

async fn send(
    what: &'static str,
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<String, IotError> {
    let response = request.send().await.map_err(|e| IotError::Network {
        url: url.to_owned(),
        message: error_chain(&e),
    })?;
    let status = response.status();
    let body = response.text().await.map_err(|e| IotError::Network {
        url: url.to_owned(),
        message: error_chain(&e),
    })?;
    if !status.is_success() {
        return Err(IotError::Refused {
            what,
            status: status.as_u16(),
            message: message_of(&body),
        });
    }
    Ok(body)
}

/// Which credentials to ask for.
#[derive(Debug, Clone)]
pub struct CredentialsRequest {
    /// The `iot:CredentialProvider` endpoint, `host[:port]`.
    pub endpoint: String,
    pub role_alias: String,
    pub thing_name: String,
}

#[derive(Deserialize)]
struct ProviderAnswer {
    credentials: ProviderCredentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderCredentials {
    access_key_id: String,
    secret_access_key: SecretString,
    session_token: SecretString,
    expiration: String,
}

/// Temporary AWS credentials. Shown only by [`ProcessCredentials::to_credential_process_json`].
pub struct ProcessCredentials {
    pub access_key_id: String,
    secret_access_key: SecretString,
    session_token: SecretString,
    /// As the provider gave it (RFC 3339).
    pub expiration: String,
}

impl std::fmt::Debug for ProcessCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

impl ProcessCredentials {
    /// The document an AWS SDK or CLI expects from a `credential_process` on stdout.
    pub fn to_credential_process_json(&self) -> String {
        serde_json::json!({
            "Version": 1,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key.expose_secret(),
            "SessionToken": self.session_token.expose_secret(),
            "Expiration": self.expiration,
        })
        .to_string()
    }
}

/// Characters kept as they are in a path segment: RFC 3986 unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `GET https://<endpoint>/role-aliases/<alias>/credentials` with the thing name header.
pub async fn fetch_credentials(
    client: &reqwest::Client,
    request: &CredentialsRequest,
) -> Result<ProcessCredentials, IotError> {
    const WHAT: &str = "the AWS IoT credentials provider";
    for (name, value) in [
        ("role alias", &request.role_alias),
        ("thing name", &request.thing_name),
    ] {
        if value.is_empty() || value.chars().any(char::is_control) {
            return Err(IotError::Invalid(format!(
                "the {name} {value:?} is not usable"
            )));
        }
    }
    let base = https_base(&request.endpoint, 443).map_err(IotError::Invalid)?;
    let url = format!(
        "{base}/role-aliases/{}/credentials",
        utf8_percent_encode(&request.role_alias, SEGMENT)
    );
    let body = send(
        WHAT,
        client
            .get(&url)
            .header("x-amzn-iot-thingname", &request.thing_name),
        &url,
    )
    .await?;
    let answer: ProviderAnswer =
        serde_json::from_str(&body).map_err(|e| IotError::InvalidResponse {
            what: WHAT,
            message: e.to_string(),
        })?;
    let c = answer.credentials;
    if c.access_key_id.is_empty() || c.expiration.is_empty() {
        return Err(IotError::InvalidResponse {
            what: WHAT,
            message: "empty accessKeyId or expiration".into(),
        });
    }
    Ok(ProcessCredentials {
        access_key_id: c.access_key_id,
        secret_access_key: c.secret_access_key,
        session_token: c.session_token,
        expiration: c.expiration,
    })
}

/// A topic AWS IoT accepts for publishing: not empty, at most 256 bytes, no wildcards.
pub fn check_topic(topic: &str) -> Result<(), IotError> {
    if topic.is_empty() || topic.len() > 256 || topic.contains(['#', '+']) || topic.contains('\0') {
        return Err(IotError::Invalid(format!(
            "topic {topic:?}: must be 1 to 256 bytes without the wildcards # and +"
        )));
    }
    Ok(())
}

/// `POST https://<data endpoint>:8443/topics/<topic>?qos=<qos>`; the topic is percent-encoded
/// whole (`/` too), as AWS IoT's HTTPS publish expects.
pub async fn publish(
    client: &reqwest::Client,
    endpoint: &str,
    topic: &str,
    payload: Vec<u8>,
    qos: u8,
) -> Result<(), IotError> {
    const WHAT: &str = "AWS IoT";
    check_topic(topic)?;
    if qos > 1 {
        return Err(IotError::Invalid(format!(
            "qos {qos}: AWS IoT takes 0 or 1"
        )));
    }
    let base = https_base(endpoint, 8443).map_err(IotError::Invalid)?;
    let url = format!(
        "{base}/topics/{}?qos={qos}",
        utf8_percent_encode(topic, SEGMENT)
    );
    send(WHAT, client.post(&url).body(payload), &url).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_checked() {
        assert!(check_topic("sensors/room-1/temperature").is_ok());
        for bad in ["", "a/#", "a/+/b", &"x".repeat(257)] {
            assert!(check_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_json_has_the_credential_process_shape() {
        let c = ProcessCredentials {
            access_key_id: "AKIA".into(),
            secret_access_key: "s".to_owned().into(),
            session_token: "t".to_owned().into(),
            expiration: "2030-01-01T00:00:00Z".into(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&c.to_credential_process_json()).unwrap_or_default();
        assert_eq!(v["Version"], 1);
        assert_eq!(v["SecretAccessKey"], "s");
        assert_eq!(v["Expiration"], "2030-01-01T00:00:00Z");
        assert!(!format!("{c:?}").contains("\"s\""));
    }
}
