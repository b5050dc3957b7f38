use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use cvm_aws::fleet_table::{create_enrollments, EnrollmentWrite};
use cvm_core::ports::DeviceStore;
use cvm_core::{AuditEvent, AuditKind, DeviceRecord, Serial, ThingName, Token};

use crate::helpers::*;

/// The factory file as a map serial -> token, checking its header.
fn factory(path: &std::path::Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("serial,token"));
    lines
        .map(|l| {
            let (s, t) = l.split_once(',').unwrap();
            (s.to_owned(), t.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn a_thousand_rows_with_a_duplicate_and_a_malformed_one_then_a_rerun() {
    let table = private_table().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("BULK");
    let key = rcgen::KeyPair::generate().unwrap();
    let key_b64 = base64::engine::general_purpose::STANDARD
        .encode(rcgen::PublicKeyData::subject_public_key_info(&key));
    let mut csv = String::from("serial,thing_name,policy,attributes,public_key\n");
    for i in 0..1000 {
        csv.push_str(&format!("{prefix}-{i},,,site=lab;n={i},\n"));
    }
    // Line 1002: pre-registered (no token unless asked); 1003: a duplicate of line 2;
    // 1004: malformed.
    csv.push_str(&format!("{prefix}-key,,,,{key_b64}\n"));
    csv.push_str(&format!("{prefix}-0,,,,\n"));
    csv.push_str(&format!("{prefix}-bad,,,colour=red;size,\n"));
    let input = dir.path().join("devices.csv");
    std::fs::write(&input, csv).unwrap();
    let factory_path = dir.path().join("factory.csv");

    let started = std::time::Instant::now();
    let out = admin(&[
        "--table",
        &table,
        "enroll",
        "--csv",
        input.to_str().unwrap(),
        "--factory-file",
        factory_path.to_str().unwrap(),
        "--json",
    ]);
    eprintln!("1001 rows enrolled in {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary = json(&stdout(&out));
    assert_eq!(summary["enrolled"], 1001, "{summary}");
    assert_eq!(summary["existing"].as_array().unwrap().len(), 0);
    assert_eq!(summary["failed"].as_array().unwrap().len(), 0, "{summary}");
    assert_eq!(summary["duplicates"][0]["line"], 1003);
    assert!(summary["duplicates"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("line 2"));
    assert_eq!(summary["malformed"][0]["line"], 1004);
    assert_eq!(summary["malformed"].as_array().unwrap().len(), 1);

    // The factory file: 0600, one token per tokened row, each the one whose hash is stored.
    assert_eq!(mode(&factory_path), 0o600);
    let tokens = factory(&factory_path);
    assert_eq!(tokens.len(), 1000);
    assert!(!tokens.contains_key(&format!("{prefix}-key")));
    assert_eq!(
        tokens.values().collect::<HashSet<_>>().len(),
        1000,
        "tokens repeat"
    );
    let store = store(&table).await;
    for i in [0, 1, 499, 999] {
        let serial = format!("{prefix}-{i}");
        let r = store
            .get(&Serial::parse(&serial).unwrap())
            .await
            .unwrap()
            .unwrap();
        let token = Token::parse(&tokens[&serial]).unwrap();
        assert!(
            r.credentials.token_hash.as_ref().unwrap().matches(&token),
            "{serial}"
        );
        assert_eq!(
            r.attributes.iter().find(|(k, _)| *k == "n").unwrap().1,
            i.to_string()
        );
        assert!(
            r.history[0].actor.starts_with("arn:aws:"),
            "{:?}",
            r.history
        );
        assert!(
            r.history[0].detail.contains(&format!("line {}", i + 2)),
            "{:?}",
            r.history
        );
    }
    let keyed = store
        .get(&Serial::parse(&format!("{prefix}-key")).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(keyed.credentials.token_hash.is_none());
    let (_, csr) = {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "x");
        ((), params.serialize_request(&key).unwrap().pem().unwrap())
    };
    assert_eq!(
        keyed.credentials.registered_key.as_ref(),
        Some(cvm_core::Csr::parse_pem(&csr).unwrap().fingerprint())
    );

    // The same path again: refused before anything, the file untouched.
    let before = std::fs::read(&factory_path).unwrap();
    let out = admin(&[
        "--table",
        &table,
        "enroll",
        "--csv",
        input.to_str().unwrap(),
        "--factory-file",
        factory_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("never overwritten"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&factory_path).unwrap(), before);

    // A re-run: every serial reported existing, no new token, the stored hashes unchanged.
    let again_path = dir.path().join("factory-again.csv");
    let out = admin(&[
        "--table",
        &table,
        "enroll",
        "--csv",
        input.to_str().unwrap(),
        "--factory-file",
        again_path.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary = json(&stdout(&out));
    assert_eq!(summary["enrolled"], 0);
    assert_eq!(summary["existing"].as_array().unwrap().len(), 1001);
    assert!(factory(&again_path).is_empty());
    let r = store
        .get(&Serial::parse(&format!("{prefix}-7")).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(r
        .credentials
        .token_hash
        .unwrap()
        .matches(&Token::parse(&tokens[&format!("{prefix}-7")]).unwrap()));
    assert_eq!(r.version, 0);
    drop_table(&table).await;
}

#[tokio::test]
async fn rows_that_exist_or_cannot_be_read_are_reported_and_the_file_kept() {
    let table = private_table().await;
    let dir = tempfile::tempdir().unwrap();
    let existing = unique("OLD");
    let old_token = enroll(&table, &existing);
    let fresh = unique("NEW");
    let input = dir.path().join("in.csv");
    std::fs::write(
        &input,
        format!("serial,public_key\n{existing},\n{fresh},\nKEYED-{fresh},not-base64!\n"),
    )
    .unwrap();
    let factory_path = dir.path().join("f.csv");
    let out = admin(&[
        "--table",
        &table,
        "enroll",
        "--csv",
        input.to_str().unwrap(),
        "--factory-file",
        factory_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("line 2: {existing} is already enrolled")),
        "{text}"
    );
    assert!(
        text.contains("line 4: malformed: public_key: not base64"),
        "{text}"
    );
    assert!(
        text.contains("enrolled 1, existing 1, malformed 1, duplicate 0, failed 0"),
        "{text}"
    );
    let tokens = factory(&factory_path);
    assert_eq!(tokens.keys().collect::<Vec<_>>(), [&fresh]);
    // The existing record kept its token.
    let r = record(&table, &existing).await;
    assert!(r
        .credentials
        .token_hash
        .unwrap()
        .matches(&Token::parse(&old_token).unwrap()));
    // Nothing in the output is a token.
    assert!(!text.contains(&tokens[&fresh]) && !stderr(&out).contains(&tokens[&fresh]));

    // A header without a serial column stops everything, before any file is made.
    std::fs::write(&input, "thing_name\nx\n").unwrap();
    let none = dir.path().join("none.csv");
    let out = admin(&[
        "--table",
        &table,
        "enroll",
        "--csv",
        input.to_str().unwrap(),
        "--factory-file",
        none.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no serial column"),
        "{}",
        stderr(&out)
    );
    assert!(!none.exists());
    drop_table(&table).await;
}

/// The write path against DynamoDB's real condition checks: a serial that exists is reported
/// existing (its record untouched) and the rest of the batch is written; an item that is
/// exactly ours (an earlier attempt's lost answer) counts as written.
#[tokio::test]
async fn a_batch_with_existing_serials_writes_the_others() {
    let table = private_table().await;
    let client = aws_sdk_dynamodb::Client::new(&sdk().await);
    let record = |serial: &str| {
        let serial = Serial::parse(serial).unwrap();
        let token = Token::generate().unwrap();
        DeviceRecord::new_enrollment(
            serial.clone(),
            cvm_core::lifecycle::credentials(Some(&token), None),
            ThingName::from(&serial),
            None,
            Default::default(),
            AuditEvent::new("2026-01-01T00:00:00Z", AuditKind::Enrolled, "test", "token"),
        )
    };
    let theirs = unique("THEIRS");
    let their_token = enroll(&table, &theirs);
    let ours_already = record(&unique("OURS"));
    assert!(matches!(
        create_enrollments(&client, &table, std::slice::from_ref(&ours_already)).await[..],
        [EnrollmentWrite::Created]
    ));
    let batch = vec![
        record(&unique("A")),
        record(&theirs),
        ours_already.clone(),
        record(&unique("B")),
    ];
    let results = create_enrollments(&client, &table, &batch).await;
    let kinds: Vec<&str> = results
        .iter()
        .map(|r| match r {
            EnrollmentWrite::Created => "created",
            EnrollmentWrite::Existing => "existing",
            EnrollmentWrite::Failed(e) => panic!("{e}"),
        })
        .collect();
    assert_eq!(kinds, ["created", "existing", "created", "created"]);
    let store = store(&table).await;
    for r in [&batch[0], &batch[3]] {
        assert!(store.get(&r.serial).await.unwrap().is_some());
    }
    let kept = store.get(&batch[1].serial).await.unwrap().unwrap();
    assert!(kept
        .credentials
        .token_hash
        .unwrap()
        .matches(&Token::parse(&their_token).unwrap()));
    drop_table(&table).await;
}
