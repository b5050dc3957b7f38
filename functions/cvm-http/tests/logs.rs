//! The logs of a full vend (a wrong token, a failure with undo, success, replay) hold no token,
//! no token hash and no key. Alone in its test binary, with a global subscriber, so that no
//! other test's thread can make the tracing call sites skip this one's events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use common::*;
use cvm_core::Token;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_of_a_full_vend_hold_no_token_and_no_key() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(move || sink.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pem, key_pem) = csr("SN-100");
    runtime.block_on(async {
        let (app, iot) = app().await;
        // A wrong token, a failure with undo, then success and a replay: every log path.
        let wrong = serde_json::json!({"serial": "SN-100", "token": "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB", "csr": pem});
        call(&app, "POST", "/v1/certificates", wrong.to_string()).await;
        iot.faults.fail_next("issuer.activate", cvm_core::ports::FailureKind::Other);
        let body = serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": pem});
        let (s, _, _) = call(&app, "POST", "/v1/certificates", body.to_string()).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        let (s, _, _) = call(&app, "POST", "/v1/certificates", body.to_string()).await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, _, _) = call(&app, "POST", "/v1/certificates", body.to_string()).await;
        assert_eq!(s, StatusCode::OK);
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("\"outcome\":\"issued\""),
        "the vend was logged: {logs}"
    );
    assert!(logs.contains("SN-100"));
    for secret in [
        TOKEN,
        "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
        &Token::parse(TOKEN).unwrap().hash().to_hex(),
    ] {
        assert!(
            !logs.contains(secret),
            "a token (or its hash) is in the logs"
        );
    }
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!logs.contains("PRIVATE KEY"));
    assert!(!logs.contains(&key_body[..40]));
}
