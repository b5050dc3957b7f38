//! Which AWS operation a request is, from what the SDK puts on the wire.
//!
//! - The service: the SigV4 credential scope (`Credential=AKID/DATE/REGION/SERVICE/aws4_request`
//!   in `Authorization`), which every SDK request carries.
//! - JSON-RPC services (DynamoDB: awsJson1_0, ACM-PCA: awsJson1_1): `X-Amz-Target:
//!   Prefix.Operation`.
//! - AWS IoT (restJson1): method and path, matched against the routes of the operations the
//!   project calls. Anything else is named `"<METHOD> <path>"` so it still shows in the log.

use hyper::http::{HeaderMap, Method};

/// How a service shapes its errors on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// `X-Amz-Target` services; errors are `{"__type", "message"}` with this content type.
    AwsJson { content_type: &'static str },
    /// REST services; errors carry their code in `x-amzn-ErrorType`.
    RestJson,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The SigV4 signing name: `dynamodb`, `iot`, `acm-pca`, or `unknown`.
    pub service: String,
    /// The API operation, e.g. `UpdateItem`, `CreateCertificateFromCsr`.
    pub name: String,
    pub protocol: Protocol,
}

impl Operation {
    /// `service:Name`, the key rules and limits may use.
    pub fn qualified(&self) -> String {
        format!("{}:{}", self.service, self.name)
    }

    /// Whether a rule's or limit's operation selector (`Name` or `service:Name`) names this.
    pub fn is(&self, selector: &str) -> bool {
        match selector.split_once(':') {
            Some((service, name)) => service == self.service && name == self.name,
            None => selector == self.name,
        }
    }
}

const JSON_1_0: &str = "application/x-amz-json-1.0";
const JSON_1_1: &str = "application/x-amz-json-1.1";

/// The routes of AWS IoT's control plane that the project (vend, cvm-admin, tests) calls.
/// `*` is one path segment.
const IOT_ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/certificates", "CreateCertificateFromCsr"),
    ("GET", "/certificates", "ListCertificates"),
    ("GET", "/certificates/*", "DescribeCertificate"),
    ("PUT", "/certificates/*", "UpdateCertificate"),
    ("DELETE", "/certificates/*", "DeleteCertificate"),
    ("POST", "/keys-and-certificate", "CreateKeysAndCertificate"),
    ("POST", "/certificate/register", "RegisterCertificate"),
    (
        "POST",
        "/certificate/register-no-ca",
        "RegisterCertificateWithoutCA",
    ),
    ("POST", "/cacertificate", "RegisterCACertificate"),
    ("GET", "/cacertificate/*", "DescribeCACertificate"),
    ("PUT", "/cacertificate/*", "UpdateCACertificate"),
    ("DELETE", "/cacertificate/*", "DeleteCACertificate"),
    ("GET", "/cacertificates", "ListCACertificates"),
    ("GET", "/registrationcode", "GetRegistrationCode"),
    ("GET", "/things", "ListThings"),
    ("POST", "/things/*", "CreateThing"),
    ("GET", "/things/*", "DescribeThing"),
    ("PATCH", "/things/*", "UpdateThing"),
    ("DELETE", "/things/*", "DeleteThing"),
    ("PUT", "/things/*/principals", "AttachThingPrincipal"),
    ("DELETE", "/things/*/principals", "DetachThingPrincipal"),
    ("GET", "/things/*/principals", "ListThingPrincipals"),
    ("GET", "/principals/things", "ListPrincipalThings"),
    ("PUT", "/target-policies/*", "AttachPolicy"),
    ("POST", "/target-policies/*", "DetachPolicy"),
    ("POST", "/attached-policies/*", "ListAttachedPolicies"),
    ("POST", "/policy-targets/*", "ListTargetsForPolicy"),
    ("GET", "/policies", "ListPolicies"),
    ("POST", "/policies/*", "CreatePolicy"),
    ("GET", "/policies/*", "GetPolicy"),
    ("GET", "/endpoint", "DescribeEndpoint"),
];

fn route_matches(template: &str, path: &str) -> bool {
    let mut want = template.split('/');
    let mut have = path.split('/');
    loop {
        match (want.next(), have.next()) {
            (None, None) => return true,
            (Some("*"), Some(segment)) if !segment.is_empty() => {}
            (Some(w), Some(h)) if w == h => {}
            _ => return false,
        }
    }
}

/// The signing name from a SigV4 `Authorization` header.
fn signing_service(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let credential = auth.split("Credential=").nth(1)?;
    let scope = credential.split([',', ' ']).next()?;
    // AKID/DATE/REGION/SERVICE/aws4_request
    scope.split('/').nth(3).map(str::to_owned)
}

/// Names the operation of one request.
pub fn recognise(method: &Method, path: &str, headers: &HeaderMap) -> Operation {
    let signed = signing_service(headers);
    if let Some(target) = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split_once('.'))
    {
        let (prefix, name) = target;
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let (service, json) = match prefix {
            p if p.starts_with("DynamoDB_") => ("dynamodb".to_owned(), JSON_1_0),
            "ACMPrivateCA" => ("acm-pca".to_owned(), JSON_1_1),
            _ if content_type.contains("1.0") => {
                (signed.unwrap_or_else(|| prefix.to_owned()), JSON_1_0)
            }
            _ => (signed.unwrap_or_else(|| prefix.to_owned()), JSON_1_1),
        };
        return Operation {
            service,
            name: name.to_owned(),
            protocol: Protocol::AwsJson { content_type: json },
        };
    }
    let service = signed.unwrap_or_else(|| "unknown".to_owned());
    let name = if service == "iot" {
        IOT_ROUTES
            .iter()
            .find(|(m, template, _)| *m == method.as_str() && route_matches(template, path))
            .map(|(_, _, name)| (*name).to_owned())
    } else {
        None
    };
    Operation {
        name: name.unwrap_or_else(|| format!("{method} {path}")),
        service,
        protocol: Protocol::RestJson,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const IOT_AUTH: &str = "AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/iot/aws4_request, SignedHeaders=host, Signature=00";

    #[test]
    fn dynamodb_and_private_ca_by_target() {
        let op = recognise(
            &Method::POST,
            "/",
            &headers(&[
                ("x-amz-target", "DynamoDB_20120810.UpdateItem"),
                ("content-type", JSON_1_0),
            ]),
        );
        assert_eq!(op.qualified(), "dynamodb:UpdateItem");
        assert_eq!(
            op.protocol,
            Protocol::AwsJson {
                content_type: JSON_1_0
            }
        );
        let op = recognise(
            &Method::POST,
            "/",
            &headers(&[("x-amz-target", "ACMPrivateCA.IssueCertificate")]),
        );
        assert_eq!(op.qualified(), "acm-pca:IssueCertificate");
        assert!(op.is("IssueCertificate") && op.is("acm-pca:IssueCertificate"));
        assert!(!op.is("dynamodb:IssueCertificate") && !op.is("Issue"));
    }

    #[test]
    fn iot_by_method_and_path() {
        let h = headers(&[("authorization", IOT_AUTH)]);
        let cases = [
            (Method::POST, "/certificates", "CreateCertificateFromCsr"),
            (Method::PUT, "/certificates/abc", "UpdateCertificate"),
            (Method::POST, "/things/ZK-1", "CreateThing"),
            (
                Method::PUT,
                "/things/ZK-1/principals",
                "AttachThingPrincipal",
            ),
            (Method::PUT, "/target-policies/p", "AttachPolicy"),
            (Method::POST, "/target-policies/p", "DetachPolicy"),
            (
                Method::POST,
                "/certificate/register-no-ca",
                "RegisterCertificateWithoutCA",
            ),
        ];
        for (method, path, name) in cases {
            let op = recognise(&method, path, &h);
            assert_eq!((op.service.as_str(), op.name.as_str()), ("iot", name));
            assert_eq!(op.protocol, Protocol::RestJson);
        }
    }

    #[test]
    fn unknown_routes_and_unsigned_requests_keep_their_method_and_path() {
        let h = headers(&[("authorization", IOT_AUTH)]);
        assert_eq!(recognise(&Method::GET, "/things/", &h).name, "GET /things/");
        assert_eq!(
            recognise(&Method::GET, "/things/a/b/c", &h).name,
            "GET /things/a/b/c"
        );
        let op = recognise(&Method::GET, "/moto-api/data.json", &HeaderMap::new());
        assert_eq!(op.qualified(), "unknown:GET /moto-api/data.json");
    }

    #[test]
    fn malformed_authorization_is_not_a_service() {
        for auth in ["Bearer x", "AWS4-HMAC-SHA256 Credential=short", ""] {
            let op = recognise(
                &Method::GET,
                "/endpoint",
                &headers(&[("authorization", auth)]),
            );
            assert_eq!(op.service, "unknown", "{auth}");
        }
    }
}
