//! The published contract, `openapi.json`, kept in step with the router:
//!
//! - the document's paths are the router's routes, and nothing else is served (404/405);
//! - every error code the code can produce is documented, under the status it is answered
//!   with, with the headers it is answered with, and the document lists no code that cannot
//!   happen;
//! - real answers of the router over in-memory ports (issue, replay, renewal, confirmation,
//!   and the errors of each operation) validate against the document's schemas and headers;
//! - the document's own examples validate against its schemas, and its request examples get
//!   past the server's parsing.
//!
//! OpenAPI 3.1 schemas are JSON Schema 2020-12: the whole document is registered as one
//! schema resource and every schema is addressed by its JSON pointer inside it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use base64::Engine as _;
use common::{app, csr, fixture, TOKEN};
use cvm_core::ports::{FailureKind, PortError};
use cvm_core::signature::{confirmation_message, renewal_message};
use cvm_core::{Csr, CsrError, DomainError, Serial, VendError};
use cvm_http::ApiError;
use jsonschema::{Draft, Registry};
use rcgen::SigningKey as _;
use serde_json::{json, Value};
use tower::ServiceExt;

/// Where the document is registered; its internal `#/...` references resolve against it.
const BASE: &str = "urn:cvm:openapi";

static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is JSON")
});

static REGISTRY: LazyLock<Registry<'static>> = LazyLock::new(|| {
    Registry::new()
        .draft(Draft::Draft202012)
        .add(BASE, DOCUMENT.clone())
        .and_then(|builder| builder.prepare())
        .expect("openapi.json registers as a JSON Schema 2020-12 resource")
});

// ---------------------------------------------------------------------------------------------
// Reading the document
// ---------------------------------------------------------------------------------------------

/// A JSON pointer token (RFC 6901).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The value at a `#/...` pointer of the document.
fn at(pointer: &str) -> &'static Value {
    let path = pointer
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("not a local reference: {pointer}"));
    DOCUMENT
        .pointer(path)
        .unwrap_or_else(|| panic!("openapi.json has nothing at {pointer}"))
}

/// Follows `$ref`s (OpenAPI reference objects: responses, headers) to the object itself, with
/// the pointer it lives at.
fn follow(pointer: String) -> (String, &'static Value) {
    let mut pointer = pointer;
    loop {
        let value = at(&pointer);
        match value.get("$ref").and_then(Value::as_str) {
            Some(target) => pointer = target.to_owned(),
            None => return (pointer, value),
        }
    }
}

/// The schema at `pointer` of the document, compiled (panics if it does not compile).
fn validator(pointer: &str) -> jsonschema::Validator {
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .with_registry(&REGISTRY)
        .should_validate_formats(true)
        .build(&json!({ "$ref": format!("{BASE}{pointer}") }))
        .unwrap_or_else(|e| panic!("the schema at {pointer} does not compile: {e}"))
}

/// Errors of `instance` against the schema at `pointer`, one line each; empty when it is valid.
fn schema_errors(pointer: &str, instance: &Value) -> Vec<String> {
    validator(pointer)
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn assert_valid(pointer: &str, instance: &Value, what: &str) {
    let errors = schema_errors(pointer, instance);
    assert!(
        errors.is_empty(),
        "{what} does not match {pointer}:\n  {}\n{instance:#}",
        errors.join("\n  ")
    );
}

/// The document's operations: path and method (lowercase).
fn documented_operations() -> BTreeSet<(String, String)> {
    let paths = DOCUMENT["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |method| (path.clone(), method.clone()))
        })
        .collect()
}

/// Where an answer of `status` to `method path` is documented: the operation's response, or
/// for what no operation answers, the router-wide responses.
fn documented_response(method: &Method, path: &str, status: StatusCode) -> Option<String> {
    let lower = method.as_str().to_ascii_lowercase();
    if let Some(operation) = DOCUMENT["paths"].get(path).and_then(|p| p.get(&lower)) {
        return operation["responses"].get(status.as_str()).map(|_| {
            format!(
                "#/paths/{}/{lower}/responses/{}",
                escape(path),
                status.as_str()
            )
        });
    }
    let router_wide = match status {
        StatusCode::NOT_FOUND if DOCUMENT["paths"].get(path).is_none() => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED if DOCUMENT["paths"].get(path).is_some() => {
            "MethodNotAllowed"
        }
        _ => return None,
    };
    Some(format!("#/components/responses/{router_wide}"))
}

/// Every documented error response: (where it is, the status it is for).
fn documented_error_responses() -> Vec<(String, StatusCode)> {
    let mut all = vec![
        (
            "#/components/responses/NotFound".to_owned(),
            StatusCode::NOT_FOUND,
        ),
        (
            "#/components/responses/MethodNotAllowed".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (path, method) in documented_operations() {
        let responses = DOCUMENT["paths"][&path][&method]["responses"]
            .as_object()
            .expect("responses");
        for status in responses.keys() {
            let status = StatusCode::from_bytes(status.as_bytes())
                .unwrap_or_else(|_| panic!("{path} {method}: response key {status} is no status"));
            if status.is_client_error() || status.is_server_error() {
                all.push((
                    format!(
                        "#/paths/{}/{method}/responses/{}",
                        escape(&path),
                        status.as_str()
                    ),
                    status,
                ));
            }
        }
    }
    all
}

/// The codes of the document's glossary (`ErrorCode`).
fn glossary() -> BTreeSet<String> {
    DOCUMENT["components"]["schemas"]["ErrorCode"]["oneOf"]
        .as_array()
        .expect("ErrorCode is a oneOf of consts")
        .iter()
        .map(|c| c["const"].as_str().expect("a const code").to_owned())
        .collect()
}

/// Which of `candidates` the JSON body schema of the response at `pointer` admits, as decided
/// by the validator itself (no reading of `enum`s by hand).
fn admitted_codes(pointer: &str, candidates: &BTreeSet<String>) -> BTreeSet<String> {
    let (resolved, _) = follow(pointer.to_owned());
    let body = validator(&format!("{resolved}/content/application~1json/schema"));
    candidates
        .iter()
        .filter(|code| body.is_valid(&json!({"code": code, "message": "m"})))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Talking to the router
// ---------------------------------------------------------------------------------------------

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} answered a body that is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
}

async fn send(app: &Router, method: Method, path: &str, body: impl Into<Body>) -> Answer {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json")
                .body(body.into())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Answer {
        status,
        headers,
        body: body.to_vec(),
    }
}

/// The value of a header as the JSON its schema describes (headers are text on the wire).
fn header_as_json(schema: &Value, raw: &str) -> Value {
    match schema["type"].as_str() {
        Some("integer") => raw
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(raw)),
        _ => Value::from(raw),
    }
}

/// Checks an answer against the document: its status is documented for the request, its
/// content type is the documented one, its body matches the schema, every required header is
/// there and valid, and every header the document describes (Retry-After) is declared where
/// it is sent.
fn check_documented(method: &Method, path: &str, answer: &Answer, what: &str) {
    let pointer = documented_response(method, path, answer.status).unwrap_or_else(|| {
        panic!(
            "{what}: {method} {path} answered {}, which the document does not list: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )
    });
    let (pointer, response) = follow(pointer);
    let declared = response["headers"].as_object().cloned().unwrap_or_default();
    for name in declared.keys() {
        let (header_pointer, header) = follow(format!("{pointer}/headers/{}", escape(name)));
        match answer.headers.get(name.as_str()) {
            Some(value) => {
                let raw = value.to_str().expect("a text header");
                assert_valid(
                    &format!("{header_pointer}/schema"),
                    &header_as_json(&header["schema"], raw),
                    &format!("{what}: header {name}: {raw:?}"),
                );
            }
            None => assert!(
                header["required"] != json!(true),
                "{what}: {} without its required header {name}",
                answer.status
            ),
        }
    }
    // The headers the contract speaks of must be declared where they are sent.
    for name in ["retry-after", "cache-control"] {
        if answer.headers.contains_key(name) {
            assert!(
                declared.keys().any(|d| d.eq_ignore_ascii_case(name)),
                "{what}: {} sends {name}, which {pointer} does not declare",
                answer.status
            );
        }
    }
    let content = response["content"].as_object().expect("content");
    if method == Method::HEAD {
        return; // a HEAD answer has no body
    }
    let content_type = answer
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    assert!(
        content.contains_key(media_type),
        "{what}: content type {content_type:?} is not one of {:?}",
        content.keys().collect::<Vec<_>>()
    );
    assert_valid(
        &format!("{pointer}/content/{}/schema", escape(media_type)),
        &answer.json(),
        &format!("{what}: the body of {}", answer.status),
    );
}

// ---------------------------------------------------------------------------------------------
// Reading the code: what axum and the error enums cannot list at run time
// ---------------------------------------------------------------------------------------------

fn source(relative: &str) -> String {
    let path = format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The string literals inside the one `fn code(&self) -> &'static str` of a source file: the
/// error codes it can answer, whatever the variants or guards that choose them.
fn codes_in_source(relative: &str) -> BTreeSet<String> {
    let text = source(relative);
    let signature = "fn code(&self) -> &'static str {";
    let starts: Vec<usize> = text.match_indices(signature).map(|(i, _)| i).collect();
    assert_eq!(
        starts.len(),
        1,
        "{relative}: expected exactly one `{signature}`; update this test if it moved"
    );
    let body = &text[starts[0] + signature.len()..];
    // The function ends at the first line that closes it at its indentation (4 spaces).
    let end = body
        .find("\n    }\n")
        .unwrap_or_else(|| panic!("{relative}: end of fn code"));
    body[..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The paths the router routes, from `router()` in `src/lib.rs` (axum cannot list them).
fn routes_in_source() -> BTreeSet<String> {
    let text = source("src/lib.rs");
    text.match_indices(".route(")
        .map(|(i, m)| {
            let rest = text[i + m.len()..].trim_start();
            let literal = rest
                .strip_prefix('"')
                .unwrap_or_else(|| panic!("src/lib.rs: a route whose path is not a literal"));
            literal[..literal.find('"').expect("end of the literal")].to_owned()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// One value of every error the HTTP boundary can answer with
// ---------------------------------------------------------------------------------------------

fn port_error(kind: FailureKind) -> PortError {
    PortError::new(kind, "issuer.issue")
}

/// One value of every variant of `ApiError`, with every `CsrError` and `VendError` inside it,
/// and both codes of `VendError::Unavailable`.
fn every_error() -> Vec<ApiError> {
    let csr = vec![
        CsrError::TooLarge,
        CsrError::Malformed("PEM preamble contains invalid data".into()),
        CsrError::BadSignature,
        CsrError::UnsupportedSignatureAlgorithm,
        CsrError::UnsupportedKey("EC curve secp521r1".into()),
        CsrError::MissingCommonName,
        CsrError::ExtensionNotAllowed("subjectAltName"),
    ];
    let vend = vec![
        VendError::InvalidCredentials,
        VendError::Locked {
            retry_after: Duration::from_secs(30),
        },
        VendError::KeyNotRegistered,
        VendError::Revoked,
        VendError::SubjectNotAllowed,
        VendError::AlreadyIssued,
        VendError::InvalidSignature,
        VendError::NothingToRenew,
        VendError::RenewalExpired,
        VendError::InProgress {
            retry_after: Duration::from_secs(12),
        },
        VendError::Unavailable {
            retry_after: Duration::from_secs(2),
            source: port_error(FailureKind::Throttled),
        },
        VendError::Unavailable {
            retry_after: Duration::from_secs(5),
            source: port_error(FailureKind::Unavailable),
        },
        VendError::Internal("the claim on the record was lost".into()),
    ];
    let mut all = vec![
        ApiError::RequestTooLarge,
        ApiError::InvalidJson,
        ApiError::InvalidRequest {
            shape: "{\"serial\", \"csr\"}",
            detail: "missing field `serial`".into(),
        },
        ApiError::InvalidSerial(DomainError::InvalidSerial.to_string()),
        ApiError::InvalidToken(DomainError::InvalidToken.to_string()),
        ApiError::InvalidSignatureEncoding,
        ApiError::InvalidCertificateId,
        ApiError::NotFound,
        ApiError::MethodNotAllowed,
    ];
    all.extend(csr.into_iter().map(ApiError::Csr));
    all.extend(vend.into_iter().map(ApiError::Vend));
    for error in &all {
        variant_is_listed(error);
    }
    all
}

/// No wildcard arm: a new variant of any of the three enums stops this test from compiling
/// until it is listed here, beside [`every_error`] where it gets its value. A new code however
/// it is chosen (a guard, a field) is caught by [`codes_in_source`].
fn variant_is_listed(error: &ApiError) {
    match error {
        ApiError::RequestTooLarge
        | ApiError::InvalidJson
        | ApiError::InvalidRequest { .. }
        | ApiError::InvalidSerial(_)
        | ApiError::InvalidToken(_)
        | ApiError::InvalidSignatureEncoding
        | ApiError::InvalidCertificateId
        | ApiError::NotFound
        | ApiError::MethodNotAllowed => {}
        ApiError::Csr(csr) => match csr {
            CsrError::TooLarge
            | CsrError::Malformed(_)
            | CsrError::BadSignature
            | CsrError::UnsupportedSignatureAlgorithm
            | CsrError::UnsupportedKey(_)
            | CsrError::MissingCommonName
            | CsrError::ExtensionNotAllowed(_) => {}
        },
        ApiError::Vend(vend) => match vend {
            VendError::InvalidCredentials
            | VendError::Locked { .. }
            | VendError::KeyNotRegistered
            | VendError::Revoked
            | VendError::SubjectNotAllowed
            | VendError::AlreadyIssued
            | VendError::InvalidSignature
            | VendError::NothingToRenew
            | VendError::RenewalExpired
            | VendError::InProgress { .. }
            | VendError::Unavailable { .. }
            | VendError::Internal(_) => {}
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// Every `$ref` of the document, with where it is.
fn references(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref" {
                    if let Some(target) = child.as_str() {
                        out.push((at.to_owned(), target.to_owned()));
                    }
                } else {
                    references(child, &format!("{at}/{}", escape(key)), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                references(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_openapi_3_1_and_its_references_and_schemas_hold() {
    let version = DOCUMENT["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi: {version}");

    let mut refs = Vec::new();
    references(&DOCUMENT, "#", &mut refs);
    assert!(refs.len() > 20, "the document shares its schemas by $ref");
    for (from, target) in &refs {
        assert!(
            target.starts_with("#/") && DOCUMENT.pointer(&target[1..]).is_some(),
            "{from}: $ref {target} resolves to nothing in the document"
        );
    }

    let schemas = DOCUMENT["components"]["schemas"].as_object().unwrap();
    for (name, schema) in schemas {
        let pointer = format!("#/components/schemas/{}", escape(name));
        let compiled = validator(&pointer);
        for example in schema["examples"].as_array().into_iter().flatten() {
            assert!(
                compiled.is_valid(example),
                "an example of {name} does not match it: {example}"
            );
        }
    }
    for (name, header) in DOCUMENT["components"]["headers"].as_object().unwrap() {
        if let Some(example) = header.get("example") {
            assert_valid(
                &format!("#/components/headers/{}/schema", escape(name)),
                example,
                &format!("the example of header {name}"),
            );
        }
    }
}

#[test]
fn every_example_of_the_document_matches_its_schema() {
    let mut checked = 0;
    for (path, method) in documented_operations() {
        let operation = format!("#/paths/{}/{method}", escape(&path));
        let body = format!("{operation}/requestBody/content/application~1json");
        for (name, example) in at(&body)["examples"].as_object().expect("request examples") {
            assert_valid(
                &format!("{body}/schema"),
                &example["value"],
                &format!("{method} {path}: request example {name}"),
            );
            checked += 1;
        }
        for status in at(&format!("{operation}/responses"))
            .as_object()
            .unwrap()
            .keys()
        {
            let (response, value) = follow(format!("{operation}/responses/{status}"));
            for (media, content) in value["content"].as_object().unwrap() {
                let examples = content["examples"].as_object();
                assert!(
                    examples.is_some_and(|e| !e.is_empty()),
                    "{method} {path} {status}: no example"
                );
                for (name, example) in examples.into_iter().flatten() {
                    assert_valid(
                        &format!("{response}/content/{}/schema", escape(media)),
                        &example["value"],
                        &format!("{method} {path} {status}: example {name}"),
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 25, "only {checked} examples");
}

#[tokio::test]
async fn the_request_examples_get_past_the_servers_parsing() {
    let (app, _) = app().await;
    for (path, method) in documented_operations() {
        let body = format!(
            "#/paths/{}/{method}/requestBody/content/application~1json",
            escape(&path)
        );
        for (name, example) in at(&body)["examples"].as_object().unwrap() {
            let answer = send(&app, Method::POST, &path, example["value"].to_string()).await;
            let what = format!("{path} example {name}");
            check_documented(&Method::POST, &path, &answer, &what);
            // The example's serial is enrolled nowhere: refused by the workflow, not the parser.
            assert!(
                answer.status == StatusCode::FORBIDDEN,
                "{what}: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
    }
}

#[tokio::test]
async fn the_documented_paths_are_the_routes_the_router_serves() {
    let operations = documented_operations();
    let documented: BTreeSet<String> = operations.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(
        documented,
        routes_in_source(),
        "the document's paths and the router's routes differ"
    );
    for (path, method) in &operations {
        assert_eq!(method, "post", "{path}: the router serves POST only");
    }

    let (app, _) = app().await;
    for path in &documented {
        let answer = send(&app, Method::POST, path, "{}").await;
        check_documented(&Method::POST, path, &answer, &format!("POST {path}"));
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "POST {path}"
        );
        for method in [
            Method::GET,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
            Method::HEAD,
        ] {
            let answer = send(&app, method.clone(), path, Body::empty()).await;
            assert_eq!(
                answer.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            check_documented(&method, path, &answer, &format!("{method} {path}"));
        }
    }
    for path in [
        "/",
        "/v1",
        "/v1/",
        "/v1/certificates/",
        "/v1/certificates/abc",
        "/v1/renewals/confirm/x",
        "/v2/certificates",
        "/V1/CERTIFICATES",
        "/openapi.json",
    ] {
        for method in [Method::POST, Method::GET] {
            let answer = send(&app, method.clone(), path, "{}").await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {path}");
            check_documented(&method, path, &answer, &format!("{method} {path}"));
            assert_eq!(answer.code(), "not_found");
        }
    }
}

#[test]
fn every_error_code_is_documented_under_the_status_it_is_answered_with() {
    let errors = every_error();
    let mut produced: BTreeMap<&'static str, StatusCode> = BTreeMap::new();
    for error in &errors {
        let status = *produced.entry(error.code()).or_insert(error.status());
        assert_eq!(status, error.status(), "{} has two statuses", error.code());
    }
    let produced_codes: BTreeSet<String> = produced.keys().map(|c| (*c).to_owned()).collect();

    // What the source can answer, whatever chooses it, is what the values above produce.
    let mut in_source = BTreeSet::new();
    for file in [
        "src/error.rs",
        "../cvm-core/src/vend.rs",
        "../cvm-core/src/csr.rs",
    ] {
        in_source.extend(codes_in_source(file));
    }
    // (`ApiError::code` passes the nested enums' codes through; its literals are its own.)
    assert_eq!(
        in_source, produced_codes,
        "the codes in the source and those of every_error() differ: give every new code a value there"
    );

    // The glossary lists exactly the codes there are.
    let glossary = glossary();
    let undocumented: Vec<_> = produced_codes.difference(&glossary).collect();
    let stale: Vec<_> = glossary.difference(&produced_codes).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "ErrorCode in openapi.json: missing {undocumented:?}, never answered {stale:?}"
    );

    // Each code is admitted under its status, and only there.
    let responses: Vec<(String, StatusCode, BTreeSet<String>)> = documented_error_responses()
        .into_iter()
        .map(|(pointer, status)| {
            let codes = admitted_codes(&pointer, &glossary);
            (follow(pointer).0, status, codes)
        })
        .collect();
    let mut documented_anywhere = BTreeSet::new();
    for (pointer, status, codes) in &responses {
        for code in codes.iter().cloned() {
            assert_eq!(
                produced.get(code.as_str()),
                Some(status),
                "{pointer} admits {code}, which is answered with {:?}",
                produced.get(code.as_str())
            );
            documented_anywhere.insert(code);
        }
    }
    assert_eq!(
        documented_anywhere, produced_codes,
        "codes answered that no response documents"
    );

    // Each error's answer: Retry-After exactly where the document has it, and a body that
    // matches every response documenting its code.
    for error in errors {
        let (code, status) = (error.code(), error.status());
        let homes: Vec<&String> = responses
            .iter()
            .filter(|(_, s, codes)| *s == status && codes.contains(code))
            .map(|(pointer, _, _)| pointer)
            .collect();
        let response = error.into_response();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        for home in &homes {
            let declared = at(home)["headers"]
                .get("Retry-After")
                .map(|_| follow(format!("{home}/headers/Retry-After")));
            match (&retry_after, declared) {
                (Some(value), Some((pointer, header))) => assert_valid(
                    &format!("{pointer}/schema"),
                    &header_as_json(&header["schema"], value),
                    &format!("{code}: Retry-After {value:?}"),
                ),
                (Some(_), None) => {
                    panic!("{code} comes with Retry-After, which {home} does not declare")
                }
                (None, Some((_, header))) => assert!(
                    header["required"] != json!(true),
                    "{home} requires Retry-After, which {code} does not send"
                ),
                (None, None) => {}
            }
        }
        let body = body_of(response);
        for home in &homes {
            assert_valid(
                &format!("{home}/content/application~1json/schema"),
                &body,
                &format!("the body of {code} ({status})"),
            );
        }
    }
}

/// The JSON body of a response built in memory.
fn body_of(response: axum::response::Response) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bytes = runtime
        .block_on(to_bytes(response.into_body(), usize::MAX))
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Signs `message` as a device does, standard base64.
fn sign(key: &rcgen::KeyPair, message: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.sign(message).unwrap())
}

/// A CSR for `cn` with the given key.
fn csr_with(key: &rcgen::KeyPair, cn: &str) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// Drives requests and checks every answer against the document, recording which
/// (path, status) and codes were seen.
#[derive(Default)]
struct Coverage {
    seen: BTreeSet<(String, u16)>,
    codes: BTreeSet<String>,
}

impl Coverage {
    async fn post(
        &mut self,
        app: &Router,
        path: &str,
        body: impl Into<Body>,
        expect: (StatusCode, &str),
    ) -> Value {
        let answer = send(app, Method::POST, path, body).await;
        let what = format!("POST {path} expecting {} {}", expect.0, expect.1);
        check_documented(&Method::POST, path, &answer, &what);
        let json = answer.json();
        let code = json["code"].as_str().unwrap_or_default();
        assert_eq!(
            (answer.status, code),
            expect,
            "{what}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        self.seen.insert((path.to_owned(), answer.status.as_u16()));
        if !code.is_empty() {
            self.codes.insert(code.to_owned());
        }
        json
    }
}

const VEND: &str = "/v1/certificates";
const RENEW: &str = "/v1/renewals";
const CONFIRM: &str = "/v1/renewals/confirm";
const SERIAL: &str = "SN-100";

#[tokio::test]
async fn real_answers_of_every_operation_match_the_document() {
    let ok = |status| (status, "");
    let mut c = Coverage::default();
    let serial = Serial::parse(SERIAL).unwrap();

    // --- Before the first certificate.
    let (app, iot) = app().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = csr_with(&key, SERIAL);
    let vend = json!({"serial": SERIAL, "token": TOKEN, "csr": pem}).to_string();
    let renewal_key = rcgen::KeyPair::generate().unwrap();
    let renewal_pem = csr_with(&renewal_key, SERIAL);
    let renewal_der = Csr::parse_pem(&renewal_pem).unwrap().der().to_vec();
    let renewal = json!({
        "serial": SERIAL,
        "csr": renewal_pem,
        "signature": sign(&key, &renewal_message(&serial, &renewal_der)),
    })
    .to_string();
    c.post(
        &app,
        RENEW,
        renewal.clone(),
        (StatusCode::CONFLICT, "nothing_to_renew"),
    )
    .await;
    let any_id = "a".repeat(64);
    let early_confirm = json!({
        "serial": SERIAL,
        "certificateId": any_id,
        "signature": sign(&key, &confirmation_message(&serial, &any_id)),
    });
    c.post(
        &app,
        CONFIRM,
        early_confirm.to_string(),
        (StatusCode::CONFLICT, "nothing_to_renew"),
    )
    .await;

    // Each way a vend request can be malformed.
    let good = csr(SERIAL).0;
    for (body, expect) in [
        (
            "not json".to_owned(),
            (StatusCode::BAD_REQUEST, "invalid_json"),
        ),
        (String::new(), (StatusCode::BAD_REQUEST, "invalid_json")),
        (
            json!({"serial": SERIAL, "token": TOKEN, "csr": good, "policy": "admin"}).to_string(),
            (StatusCode::BAD_REQUEST, "invalid_request"),
        ),
        (
            json!({"serial": SERIAL, "token": TOKEN}).to_string(),
            (StatusCode::BAD_REQUEST, "invalid_request"),
        ),
        (
            json!({"serial": "bad serial", "token": TOKEN, "csr": good}).to_string(),
            (StatusCode::BAD_REQUEST, "invalid_serial"),
        ),
        (
            json!({"serial": SERIAL, "token": "short", "csr": good}).to_string(),
            (StatusCode::BAD_REQUEST, "invalid_token"),
        ),
        (
            json!({"serial": SERIAL, "token": TOKEN, "csr": "garbage"}).to_string(),
            (StatusCode::BAD_REQUEST, "csr_malformed"),
        ),
        (
            json!({"serial": SERIAL, "token": TOKEN, "csr": fixture("tampered.csr.pem")})
                .to_string(),
            (StatusCode::BAD_REQUEST, "csr_signature_invalid"),
        ),
        (
            json!({"serial": SERIAL, "token": TOKEN, "csr": fixture("rsa1024.csr.pem")})
                .to_string(),
            (StatusCode::BAD_REQUEST, "csr_key_unsupported"),
        ),
        (
            json!({"serial": SERIAL, "token": TOKEN, "csr": fixture("p256-no-cn.csr.pem")})
                .to_string(),
            (StatusCode::BAD_REQUEST, "csr_subject_invalid"),
        ),
        (
            json!({"serial": SERIAL, "token": TOKEN, "csr": csr_with_alt_name(SERIAL)}).to_string(),
            (StatusCode::BAD_REQUEST, "csr_extension_not_allowed"),
        ),
        (
            json!({"serial": SERIAL, "token": TOKEN, "csr": "A".repeat(13 * 1024)}).to_string(),
            (StatusCode::PAYLOAD_TOO_LARGE, "csr_too_large"),
        ),
        (
            json!({"serial": SERIAL, "token": TOKEN, "csr": "A".repeat(17 * 1024)}).to_string(),
            (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
        ),
        (
            json!({"serial": "SN-NOPE", "token": TOKEN, "csr": csr("SN-NOPE").0}).to_string(),
            (StatusCode::FORBIDDEN, "invalid_credentials"),
        ),
        (
            json!({"serial": SERIAL, "token": TOKEN, "csr": csr("other-device").0}).to_string(),
            (StatusCode::FORBIDDEN, "csr_subject_not_allowed"),
        ),
    ] {
        c.post(&app, VEND, body, expect).await;
    }

    // AWS throttles, then fails, then breaks: nothing kept, the token still good.
    for (kind, expect) in [
        (
            FailureKind::Throttled,
            (StatusCode::SERVICE_UNAVAILABLE, "service_busy"),
        ),
        (
            FailureKind::Unavailable,
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
        ),
        (
            FailureKind::Other,
            (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        ),
    ] {
        iot.faults.fail_next("issuer.issue", kind);
        c.post(&app, VEND, vend.clone(), expect).await;
    }

    // --- Issue, replay, another key.
    let issued = c
        .post(&app, VEND, vend.clone(), ok(StatusCode::CREATED))
        .await;
    let replayed = c.post(&app, VEND, vend.clone(), ok(StatusCode::OK)).await;
    assert_eq!(issued["certificateId"], replayed["certificateId"]);
    let other = json!({"serial": SERIAL, "token": TOKEN, "csr": csr(SERIAL).0});
    c.post(
        &app,
        VEND,
        other.to_string(),
        (StatusCode::CONFLICT, "already_issued"),
    )
    .await;

    // --- Renewal: each way it can be wrong, failures upstream, then proposed and replayed.
    let wrong_key = rcgen::KeyPair::generate().unwrap();
    let stranger = json!({
        "serial": SERIAL,
        "csr": csr_with(&renewal_key, SERIAL),
        "signature": sign(&wrong_key, &renewal_message(&serial, &renewal_der)),
    });
    let foreign_pem = csr_with(&renewal_key, "other-device");
    let foreign_der = Csr::parse_pem(&foreign_pem).unwrap().der().to_vec();
    let foreign = json!({
        "serial": SERIAL,
        "csr": foreign_pem,
        "signature": sign(&key, &renewal_message(&serial, &foreign_der)),
    });
    for (body, expect) in [
        (
            "[]".to_owned(),
            (StatusCode::BAD_REQUEST, "invalid_request"),
        ),
        ("{".to_owned(), (StatusCode::BAD_REQUEST, "invalid_json")),
        (
            json!({"serial": SERIAL, "csr": good, "signature": "not base64!"}).to_string(),
            (StatusCode::BAD_REQUEST, "invalid_signature_encoding"),
        ),
        (
            json!({"serial": SERIAL, "csr": good, "signature": ""}).to_string(),
            (StatusCode::BAD_REQUEST, "invalid_signature_encoding"),
        ),
        (
            json!({"serial": SERIAL, "csr": "garbage", "signature": "AAAA"}).to_string(),
            (StatusCode::BAD_REQUEST, "csr_malformed"),
        ),
        (
            json!({"serial": "", "csr": good, "signature": "AAAA"}).to_string(),
            (StatusCode::BAD_REQUEST, "invalid_serial"),
        ),
        (
            json!({"serial": SERIAL, "csr": "A".repeat(13 * 1024), "signature": "AAAA"})
                .to_string(),
            (StatusCode::PAYLOAD_TOO_LARGE, "csr_too_large"),
        ),
        (
            stranger.to_string(),
            (StatusCode::FORBIDDEN, "invalid_signature"),
        ),
        (
            foreign.to_string(),
            (StatusCode::FORBIDDEN, "csr_subject_not_allowed"),
        ),
    ] {
        c.post(&app, RENEW, body, expect).await;
    }
    for (kind, expect) in [
        (
            FailureKind::Throttled,
            (StatusCode::SERVICE_UNAVAILABLE, "service_busy"),
        ),
        (
            FailureKind::Other,
            (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        ),
    ] {
        iot.faults.fail_next("issuer.issue", kind);
        c.post(&app, RENEW, renewal.clone(), expect).await;
    }
    let proposed = c
        .post(&app, RENEW, renewal.clone(), ok(StatusCode::CREATED))
        .await;
    let again = c
        .post(&app, RENEW, renewal.clone(), ok(StatusCode::OK))
        .await;
    assert_eq!(proposed["certificateId"], again["certificateId"]);
    assert_ne!(proposed["certificateId"], issued["certificateId"]);

    // --- Confirmation.
    let new_id = proposed["certificateId"].as_str().unwrap().to_owned();
    let confirm = json!({
        "serial": SERIAL,
        "certificateId": new_id,
        "signature": sign(&renewal_key, &confirmation_message(&serial, &new_id)),
    })
    .to_string();
    let signed_by_old_key = json!({
        "serial": SERIAL,
        "certificateId": new_id,
        "signature": sign(&key, &confirmation_message(&serial, &new_id)),
    });
    let unknown_id = json!({
        "serial": SERIAL,
        "certificateId": "b".repeat(64),
        "signature": sign(&renewal_key, &confirmation_message(&serial, &"b".repeat(64))),
    });
    for (body, expect) in [
        ("7".to_owned(), (StatusCode::BAD_REQUEST, "invalid_request")),
        (
            json!({"serial": SERIAL, "certificateId": "c0ffee", "signature": "AAAA"}).to_string(),
            (StatusCode::BAD_REQUEST, "invalid_certificate_id"),
        ),
        (
            json!({"serial": SERIAL, "certificateId": new_id, "signature": "A"}).to_string(),
            (StatusCode::BAD_REQUEST, "invalid_signature_encoding"),
        ),
        (
            json!({"serial": SERIAL, "certificateId": new_id, "signature": "A".repeat(17 * 1024)})
                .to_string(),
            (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
        ),
        (
            json!({"serial": SERIAL, "certificate_id": new_id, "signature": "AAAA"}).to_string(),
            (StatusCode::BAD_REQUEST, "invalid_request"),
        ),
        (
            signed_by_old_key.to_string(),
            (StatusCode::FORBIDDEN, "invalid_signature"),
        ),
        (
            unknown_id.to_string(),
            (StatusCode::CONFLICT, "nothing_to_renew"),
        ),
    ] {
        c.post(&app, CONFIRM, body, expect).await;
    }
    for (kind, expect) in [
        (
            FailureKind::Throttled,
            (StatusCode::SERVICE_UNAVAILABLE, "service_busy"),
        ),
        (
            FailureKind::Other,
            (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        ),
    ] {
        iot.faults.fail_next("issuer.revoke", kind);
        c.post(&app, CONFIRM, confirm.clone(), expect).await;
    }
    let confirmed = c
        .post(&app, CONFIRM, confirm.clone(), ok(StatusCode::OK))
        .await;
    assert_eq!(confirmed["certificateId"], new_id.as_str());
    // Confirmed before: the same answer (the device lost the first one); the id in any case.
    let upper = json!({
        "serial": SERIAL,
        "certificateId": new_id.to_ascii_uppercase(),
        "signature": sign(&renewal_key, &confirmation_message(&serial, &new_id)),
    });
    let replayed = c
        .post(&app, CONFIRM, upper.to_string(), ok(StatusCode::OK))
        .await;
    assert_eq!(replayed["certificateId"], new_id.as_str());

    // --- Wrong tokens slow the serial down (a fresh app: the serial above has its certificate).
    let (locked_app, _) = common::app().await;
    let wrong = json!({"serial": SERIAL, "token": "W".repeat(32), "csr": csr(SERIAL).0});
    let free = cvm_core::LockoutPolicy::default().free_attempts;
    for _ in 1..free {
        c.post(
            &locked_app,
            VEND,
            wrong.to_string(),
            (StatusCode::FORBIDDEN, "invalid_credentials"),
        )
        .await;
    }
    // The failure that opens the window is still answered as a wrong token; then 429.
    c.post(
        &locked_app,
        VEND,
        wrong.to_string(),
        (StatusCode::FORBIDDEN, "invalid_credentials"),
    )
    .await;
    c.post(
        &locked_app,
        VEND,
        vend.clone(),
        (StatusCode::TOO_MANY_REQUESTS, "enrollment_locked"),
    )
    .await;

    // Every status the document lists for an operation was answered here at least once.
    let mut documented = BTreeSet::new();
    for (path, method) in documented_operations() {
        for status in DOCUMENT["paths"][&path][&method]["responses"]
            .as_object()
            .unwrap()
            .keys()
        {
            documented.insert((path.clone(), status.parse::<u16>().unwrap()));
        }
    }
    let never: Vec<_> = documented.difference(&c.seen).collect();
    assert!(
        never.is_empty(),
        "documented, never answered here: {never:?}"
    );
    let undocumented: Vec<_> = c.seen.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "answered, not documented: {undocumented:?}"
    );

    // Every code was answered for real here, but those the in-memory app cannot reach (their
    // status, headers and body are checked by value in the test above).
    let elsewhere = BTreeSet::from([
        "not_found",                           // the routes test
        "method_not_allowed",                  // the routes test
        "csr_signature_algorithm_unsupported", // needs a CSR signed with an odd algorithm
        "csr_key_not_registered",              // needs a record with a registered key
        "device_revoked",                      // needs a revoked record
        "renewal_expired",                     // needs a clock past the certificate's expiry
        "enrollment_in_progress",              // needs a vend that holds its claim
    ]);
    let missing: Vec<String> = every_error()
        .iter()
        .map(|e| e.code())
        .filter(|code| !elsewhere.contains(code) && !c.codes.contains(*code))
        .map(str::to_owned)
        .collect();
    assert!(missing.is_empty(), "never answered here: {missing:?}");
}

/// A CSR that asks for a subject alternative name, which the server refuses to honour.
fn csr_with_alt_name(cn: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["device.example".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// The server's verdict on one field: whether it got past that field's check.
async fn server_accepts(app: &Router, path: &str, body: Value, refusal: &str) -> bool {
    let answer = send(app, Method::POST, path, body.to_string()).await;
    check_documented(
        &Method::POST,
        path,
        &answer,
        &format!("POST {path} {body:.60}"),
    );
    answer.code() != refusal
}

/// Where the request schemas constrain a field (alphabet, length, size), they accept exactly
/// what the server parses: values on each side of every boundary, through the router.
#[tokio::test]
async fn request_schemas_accept_exactly_what_the_server_parses() {
    let (app, _) = app().await;
    let id = "a".repeat(64);
    let serials = [
        String::new(),
        "S".into(),
        "ZK-0001".into(),
        "a:b_c-D9".into(),
        "x".repeat(128),
        "x".repeat(129),
        "bad serial".into(),
        "a/b".into(),
        "a.b".into(),
        "é".into(),
        "SN\n".into(),
    ];
    let tokens = [
        "x".repeat(15),
        "x".repeat(16),
        "x".repeat(128),
        "x".repeat(129),
        format!("{}+", "x".repeat(20)),
        format!("{}=", "x".repeat(20)),
        format!("{}-_", "x".repeat(20)),
        "ü".repeat(16),
    ];
    let ids = [
        id.clone(),
        id.to_ascii_uppercase(),
        "a".repeat(63),
        "a".repeat(65),
        format!("{}g", "a".repeat(63)),
        format!("{}é", "a".repeat(62)),
    ];
    let signatures = [
        String::new(),
        "A".into(),
        "AA".into(),
        "AA==".into(),
        "AB==".into(),
        "AAA=".into(),
        "AAB=".into(),
        "AAAA".into(),
        "AAAA=".into(),
        "-_AA".into(),
        "A A=".into(),
        "A".repeat(2048),
        "A".repeat(2052),
    ];
    let csrs = [
        "A".repeat(12 * 1024),
        "A".repeat(12 * 1024 + 1),
        "é".repeat(6 * 1024 + 1),
    ];

    let mut disagreements = Vec::new();
    let mut compare = |field: &str, value: &str, schema: bool, server: bool| {
        if schema != server {
            let shown: String = value.chars().take(40).collect();
            disagreements.push(format!(
                "{field} {shown:?}… ({} bytes): schema {}, server {}",
                value.len(),
                if schema { "accepts" } else { "refuses" },
                if server { "accepts" } else { "refuses" },
            ));
        }
    };
    let accepts = |pointer: &str, value: &Value| schema_errors(pointer, value).is_empty();
    let vend_field = |name: &str| format!("#/components/schemas/VendRequest/properties/{name}");

    for serial in &serials {
        let server = server_accepts(
            &app,
            VEND,
            json!({"serial": serial, "token": TOKEN, "csr": "garbage"}),
            "invalid_serial",
        )
        .await;
        compare(
            "serial",
            serial,
            accepts(&vend_field("serial"), &json!(serial)),
            server,
        );
    }
    for token in tokens.iter().map(|t| json!(t)).chain([Value::Null]) {
        let server = server_accepts(
            &app,
            VEND,
            json!({"serial": SERIAL, "token": token, "csr": "garbage"}),
            "invalid_token",
        )
        .await;
        compare(
            "token",
            &token.to_string(),
            accepts(&vend_field("token"), &token),
            server,
        );
    }
    for csr in &csrs {
        let server = server_accepts(
            &app,
            VEND,
            json!({"serial": SERIAL, "token": TOKEN, "csr": csr}),
            "csr_too_large",
        )
        .await;
        compare("csr", csr, accepts(&vend_field("csr"), &json!(csr)), server);
    }
    let confirm_field =
        |name: &str| format!("#/components/schemas/ConfirmationRequest/properties/{name}");
    for certificate_id in &ids {
        let server = server_accepts(
            &app,
            CONFIRM,
            json!({"serial": SERIAL, "certificateId": certificate_id, "signature": "AAAA"}),
            "invalid_certificate_id",
        )
        .await;
        let schema = accepts(&confirm_field("certificateId"), &json!(certificate_id));
        compare("certificateId", certificate_id, schema, server);
    }
    for signature in &signatures {
        let server = server_accepts(
            &app,
            CONFIRM,
            json!({"serial": SERIAL, "certificateId": id, "signature": signature}),
            "invalid_signature_encoding",
        )
        .await;
        let schema = accepts(&confirm_field("signature"), &json!(signature));
        compare("signature", signature, schema, server);
    }

    // Whole bodies: the fields, no more, no fewer, of the right types.
    let good_csr = csr(SERIAL).0;
    let bodies = [
        (
            VEND,
            "VendRequest",
            json!({"serial": SERIAL, "token": TOKEN, "csr": good_csr}),
        ),
        (
            VEND,
            "VendRequest",
            json!({"serial": SERIAL, "csr": good_csr}),
        ),
        (
            VEND,
            "VendRequest",
            json!({"serial": SERIAL, "token": TOKEN}),
        ),
        (
            VEND,
            "VendRequest",
            json!({"serial": SERIAL, "token": TOKEN, "csr": good_csr, "thingName": "x"}),
        ),
        (
            VEND,
            "VendRequest",
            json!({"serial": 7, "token": TOKEN, "csr": good_csr}),
        ),
        (VEND, "VendRequest", json!([SERIAL, TOKEN, good_csr])),
        (
            RENEW,
            "RenewalRequest",
            json!({"serial": SERIAL, "csr": good_csr, "signature": "AAAA"}),
        ),
        (
            RENEW,
            "RenewalRequest",
            json!({"serial": SERIAL, "csr": good_csr}),
        ),
        (
            RENEW,
            "RenewalRequest",
            json!({"serial": SERIAL, "csr": good_csr, "signature": "AAAA", "token": TOKEN}),
        ),
        (
            CONFIRM,
            "ConfirmationRequest",
            json!({"serial": SERIAL, "certificateId": id, "signature": "AAAA"}),
        ),
        (
            CONFIRM,
            "ConfirmationRequest",
            json!({"serial": SERIAL, "certificate_id": id, "signature": "AAAA"}),
        ),
        (
            CONFIRM,
            "ConfirmationRequest",
            json!({"serial": SERIAL, "certificateId": id, "signature": null}),
        ),
    ];
    for (path, schema, body) in bodies {
        let server = server_accepts(&app, path, body.clone(), "invalid_request").await;
        let schema = accepts(&format!("#/components/schemas/{schema}"), &body);
        compare(path, &body.to_string(), schema, server);
    }

    assert!(
        disagreements.is_empty(),
        "the request schemas and the server disagree:\n  {}",
        disagreements.join("\n  ")
    );
}
