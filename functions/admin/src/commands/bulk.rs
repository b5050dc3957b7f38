//! `enroll --csv FILE --factory-file OUT`: many serials at once.
//!
//! The CSV has a header row naming its columns, in any order: `serial` (required),
//! `thing_name`, `policy`, `attributes` (`name=value;name=value`, at most 3) and `public_key`
//! (base64 of the DER SubjectPublicKeyInfo, or a PEM with its line breaks written `\n`; see
//! [`crate::public_key`]). An empty cell means "not given". A row that cannot be enrolled
//! as written is reported by its line number and skipped; the others are enrolled:
//! - malformed: a cell that does not parse, or a row with another number of cells than the
//!   header;
//! - duplicate: a serial, thing name or public key that an earlier row already has (the
//!   earlier row is enrolled, if it is well formed).
//!
//! The order of the work is what keeps every token: (1) the rows are parsed and the
//! operator's principal is known before anything is created; (2) the factory file is created
//! exclusively; (3) serials that already have a record are looked up (`BatchGetItem`) and get
//! no token: a re-run never re-tokens a serial; (4) tokens are generated and the factory file
//! is written and fsynced; (5) only then the records are written, in transactions of up to
//! 100 puts each conditional on the serial not existing. A serial enrolled by someone else
//! between (3) and (5) is reported as existing, and its token in the factory file as invalid;
//! so is any token whose record could not be written.

use crate::output::say;
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;

use cvm_aws::fleet_table::{
    create_enrollments, existing_serials, EnrollmentWrite, MAX_BATCH_GET_KEYS,
    MAX_TRANSACTION_ITEMS,
};
use cvm_core::{Attributes, DeviceRecord, KeyFingerprint, PolicyName, Serial, ThingName, Token};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use crate::commands::enroll::enrolled_event;
use crate::context::Context;
use crate::error::{chain, AdminError};
use crate::factory::FactoryFile;
use crate::public_key::fingerprint_from_cell;

/// Existence checks in flight at once.
const LOOKUPS_IN_FLIGHT: usize = 8;

pub struct Options {
    pub csv: PathBuf,
    pub factory_file: PathBuf,
    pub tokens_for_registered_keys: bool,
    /// Write transactions in flight at once (each up to 100 puts, 200 write units).
    pub parallel: usize,
    pub json: bool,
}

/// A row that parsed.
#[derive(Debug, Clone)]
pub struct Row {
    pub line: u64,
    pub serial: Serial,
    pub thing_name: ThingName,
    pub policy: Option<PolicyName>,
    pub attributes: Attributes,
    pub key: Option<KeyFingerprint>,
}

/// A row that was not enrolled as written, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Parsed {
    pub rows: Vec<Row>,
    pub malformed: Vec<Skipped>,
    pub duplicates: Vec<Skipped>,
}

const COLUMNS: [&str; 5] = ["serial", "thing_name", "policy", "attributes", "public_key"];

/// Column positions from the header.
struct Header {
    len: usize,
    index: HashMap<&'static str, usize>,
}

impl Header {
    fn parse(record: &csv::StringRecord) -> Result<Self, String> {
        let mut index = HashMap::new();
        for (i, raw) in record.iter().enumerate() {
            let name = raw
                .trim()
                .trim_start_matches('\u{feff}')
                .to_ascii_lowercase();
            let Some(known) = COLUMNS.iter().find(|c| **c == name) else {
                return Err(format!(
                    "unknown column {raw:?} in the header (columns: {})",
                    COLUMNS.join(", ")
                ));
            };
            if index.insert(*known, i).is_some() {
                return Err(format!("column {known:?} appears twice in the header"));
            }
        }
        if !index.contains_key("serial") {
            return Err(format!(
                "the header has no serial column (the first line must name the columns: {})",
                COLUMNS.join(", ")
            ));
        }
        Ok(Self {
            len: record.len(),
            index,
        })
    }

    fn cell<'r>(&self, record: &'r csv::StringRecord, column: &str) -> Option<&'r str> {
        self.index
            .get(column)
            .and_then(|&i| record.get(i))
            .map(str::trim)
            .filter(|c| !c.is_empty())
    }
}

/// A value shown in a message: quoted, and cut short.
fn shown(raw: &str) -> String {
    let mut s: String = raw.chars().take(64).collect();
    if raw.chars().count() > 64 {
        s.push('…');
    }
    format!("{s:?}")
}

fn parse_row(header: &Header, record: &csv::StringRecord, line: u64) -> Result<Row, String> {
    if record.len() != header.len {
        return Err(format!(
            "{} cells, the header has {}",
            record.len(),
            header.len
        ));
    }
    let raw_serial = header.cell(record, "serial").ok_or("no serial")?;
    let serial =
        Serial::parse(raw_serial).map_err(|e| format!("serial {}: {e}", shown(raw_serial)))?;
    let thing_name = match header.cell(record, "thing_name") {
        Some(t) => ThingName::parse(t).map_err(|e| format!("thing_name {}: {e}", shown(t)))?,
        None => ThingName::from(&serial),
    };
    let policy = header
        .cell(record, "policy")
        .map(|p| PolicyName::parse(p).map_err(|e| format!("policy {}: {e}", shown(p))))
        .transpose()?;
    let attributes = match header.cell(record, "attributes") {
        Some(a) => super::attributes(a.split(';').map(str::trim).filter(|p| !p.is_empty()))
            .map_err(|e| format!("attributes: {e}"))?,
        None => Attributes::default(),
    };
    let key = header
        .cell(record, "public_key")
        .map(|k| fingerprint_from_cell(k).map_err(|e| format!("public_key: {e}")))
        .transpose()?;
    Ok(Row {
        line,
        serial,
        thing_name,
        policy,
        attributes,
        key,
    })
}

/// Parses the whole CSV. Only a missing or bad header (or unreadable input) is an error;
/// bad rows are collected with their line numbers.
pub fn parse(mut input: impl std::io::Read) -> Result<Parsed, String> {
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(|e| format!("the CSV file cannot be read: {e}"))?;
    // Line numbers from byte offsets: the csv crate's own line count is off after blank lines
    // and CRLF line ends.
    let newlines: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let line_at = |position: Option<&csv::Position>| -> u64 {
        // A record's position can be at the line end or blank lines before it.
        let mut byte = position.map(|p| p.byte()).unwrap_or(0);
        while bytes
            .get(usize::try_from(byte).unwrap_or(usize::MAX))
            .is_some_and(|b| *b == b'\r' || *b == b'\n')
        {
            byte += 1;
        }
        let before = newlines.partition_point(|&n| (n as u64) < byte);
        before as u64 + 1
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::None)
        .from_reader(bytes.as_slice());
    let mut records = reader.records();
    let header = match records.next() {
        None => return Err("the CSV file is empty (it needs a header row)".into()),
        Some(Err(e)) => return Err(format!("the header row cannot be read: {e}")),
        Some(Ok(h)) => Header::parse(&h)?,
    };
    let mut parsed = Parsed::default();
    // First line of each serial, thing name and key seen, to report later rows.
    let mut serials: HashMap<String, u64> = HashMap::new();
    let mut things: HashMap<String, u64> = HashMap::new();
    let mut keys: HashMap<String, u64> = HashMap::new();
    for result in records {
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                let line = line_at(e.position());
                parsed.malformed.push(Skipped {
                    line,
                    reason: format!("unreadable: {}", csv_error_kind(&e)),
                });
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    return Err(format!("the CSV file cannot be read: {e}"));
                }
                continue;
            }
        };
        let line = line_at(record.position());
        if record.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        // A serial repeated is a duplicate whatever the rest of its row says.
        if let Some(raw) = header.cell(&record, "serial") {
            if let Some(first) = serials.get(raw) {
                parsed.duplicates.push(Skipped {
                    line,
                    reason: format!("serial {} is on line {first} already", shown(raw)),
                });
                continue;
            }
            serials.insert(raw.to_owned(), line);
        }
        let row = match parse_row(&header, &record, line) {
            Ok(row) => row,
            Err(reason) => {
                parsed.malformed.push(Skipped { line, reason });
                continue;
            }
        };
        if let Some(first) = things.get(row.thing_name.as_str()) {
            parsed.duplicates.push(Skipped {
                line,
                reason: format!("thing name {} is on line {first} already", row.thing_name),
            });
            continue;
        }
        if let Some(k) = &row.key {
            if let Some(first) = keys.get(k.as_str()) {
                parsed.duplicates.push(Skipped {
                    line,
                    reason: format!("public key {k} is on line {first} already"),
                });
                continue;
            }
            keys.insert(k.as_str().to_owned(), line);
        }
        things.insert(row.thing_name.as_str().to_owned(), line);
        parsed.rows.push(row);
    }
    Ok(parsed)
}

/// What a CSV error is, without the cell contents some errors quote.
fn csv_error_kind(e: &csv::Error) -> &'static str {
    match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "not UTF-8",
        csv::ErrorKind::UnequalLengths { .. } => "another number of cells than the header",
        csv::ErrorKind::Io(_) => "read error",
        _ => "not CSV",
    }
}

/// What became of the rows that parsed.
#[derive(Default)]
struct Outcome {
    enrolled: Vec<Serial>,
    /// Had a record before the run: left as it was, no token made.
    existing: Vec<(u64, Serial)>,
    /// Got a record from someone else while this run wrote: left as it was.
    raced: Vec<(u64, Serial)>,
    failed: Vec<(u64, Serial, String)>,
    /// Tokens in the factory file that are not valid (their record was not written).
    invalid_tokens: Vec<Serial>,
}

pub async fn run(ctx: &Context, options: Options) -> Result<(), AdminError> {
    let file = std::fs::File::open(&options.csv)
        .map_err(AdminError::io("could not open the CSV file", &options.csv))?;
    let parsed = parse(std::io::BufReader::new(file))
        .map_err(|e| AdminError::Usage(format!("{}: {e}", options.csv.display())))?;
    let table = ctx.table()?.to_owned();
    let client = ctx.dynamodb().clone();
    let operator = ctx.operator().await?;
    let factory = FactoryFile::create(&options.factory_file)?;

    // (3) Serials that have a record get no token.
    let serials: Vec<Serial> = parsed.rows.iter().map(|r| r.serial.clone()).collect();
    let lookups = futures::stream::iter(serials.chunks(MAX_BATCH_GET_KEYS).map(|chunk| {
        let (client, table) = (client.clone(), table.clone());
        async move { existing_serials(&client, &table, chunk).await }
    }))
    .buffer_unordered(LOOKUPS_IN_FLIGHT)
    .try_concat()
    .await;
    let existing: HashSet<Serial> = match lookups {
        Ok(found) => found.into_iter().collect(),
        Err(e) => {
            factory.abandon();
            return Err(e.into());
        }
    };

    // (4) Tokens, durable in the factory file before any record exists.
    let mut outcome = Outcome::default();
    let mut records = Vec::new();
    let mut tokens = Vec::new();
    let origin = format!(
        "bulk import from {}",
        options
            .csv
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mut line_of = HashMap::new();
    for row in parsed.rows {
        if existing.contains(&row.serial) {
            outcome.existing.push((row.line, row.serial));
            continue;
        }
        let token = if row.key.is_none() || options.tokens_for_registered_keys {
            match Token::generate() {
                Ok(t) => Some(t),
                Err(_) => {
                    factory.abandon();
                    return Err(AdminError::Random);
                }
            }
        } else {
            None
        };
        let event = enrolled_event(
            &operator,
            token.is_some(),
            row.key.as_ref(),
            Some(&format!("{origin}, line {}", row.line)),
        );
        line_of.insert(row.serial.clone(), row.line);
        records.push(DeviceRecord::new_enrollment(
            row.serial.clone(),
            cvm_core::lifecycle::credentials(token.as_ref(), row.key),
            row.thing_name,
            row.policy,
            row.attributes,
            event,
        ));
        if let Some(t) = token {
            tokens.push((row.serial, t));
        }
    }
    let has_token: HashSet<Serial> = tokens.iter().map(|(s, _)| s.clone()).collect();
    let factory_path = factory.write_all(&tokens)?;
    drop(tokens);

    // (5) The records, in conditional transactions.
    let progress = progress_bar(records.len() as u64);
    let mut writes = futures::stream::iter(records.chunks(MAX_TRANSACTION_ITEMS).map(|chunk| {
        let (client, table) = (client.clone(), table.clone());
        async move {
            let results = create_enrollments(&client, &table, chunk).await;
            chunk
                .iter()
                .map(|r| r.serial.clone())
                .zip(results)
                .collect::<Vec<_>>()
        }
    }))
    .buffer_unordered(options.parallel.max(1));
    while let Some(batch) = writes.next().await {
        progress.inc(batch.len() as u64);
        for (serial, result) in batch {
            let line = line_of.get(&serial).copied().unwrap_or(0);
            match result {
                EnrollmentWrite::Created => outcome.enrolled.push(serial),
                EnrollmentWrite::Existing => {
                    if has_token.contains(&serial) {
                        outcome.invalid_tokens.push(serial.clone());
                    }
                    outcome.raced.push((line, serial));
                }
                EnrollmentWrite::Failed(e) => {
                    if has_token.contains(&serial) {
                        outcome.invalid_tokens.push(serial.clone());
                    }
                    outcome.failed.push((line, serial, chain(&e)));
                }
            }
        }
    }
    progress.finish_and_clear();
    outcome.raced.sort();
    outcome.failed.sort_by_key(|(line, _, _)| *line);
    outcome.invalid_tokens.sort();

    let not_enrolled = outcome.existing.len()
        + outcome.raced.len()
        + outcome.failed.len()
        + parsed.malformed.len()
        + parsed.duplicates.len();
    if options.json {
        super::print_json(&summary_json(
            &factory_path,
            &outcome,
            &parsed.malformed,
            &parsed.duplicates,
        ))?;
    } else {
        print_summary(
            &factory_path,
            &outcome,
            &parsed.malformed,
            &parsed.duplicates,
        );
    }
    if not_enrolled > 0 {
        return Err(AdminError::Incomplete(format!(
            "{not_enrolled} row(s) not enrolled (see the summary)"
        )));
    }
    Ok(())
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "enrolling {bar:40} {pos}/{len} ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}

fn summary_json(
    factory: &std::path::Path,
    o: &Outcome,
    malformed: &[Skipped],
    duplicates: &[Skipped],
) -> serde_json::Value {
    let skipped = |s: &[Skipped]| -> Vec<serde_json::Value> {
        s.iter()
            .map(|s| json!({"line": s.line, "reason": s.reason}))
            .collect()
    };
    json!({
        "factoryFile": factory.display().to_string(),
        "enrolled": o.enrolled.len(),
        "existing": o.existing.iter().chain(&o.raced).map(|(line, s)| json!({"line": line, "serial": s})).collect::<Vec<_>>(),
        "malformed": skipped(malformed),
        "duplicates": skipped(duplicates),
        "failed": o.failed.iter().map(|(line, s, e)| json!({"line": line, "serial": s, "error": e})).collect::<Vec<_>>(),
        "invalidTokens": o.invalid_tokens,
    })
}

fn print_summary(
    factory: &std::path::Path,
    o: &Outcome,
    malformed: &[Skipped],
    duplicates: &[Skipped],
) {
    for (line, serial) in &o.existing {
        say!("line {line}: {serial} is already enrolled; left as it is, no token made");
    }
    for (line, serial) in &o.raced {
        say!("line {line}: {serial} was enrolled by someone else during this run; left as it is");
    }
    for s in malformed {
        say!("line {}: malformed: {}", s.line, s.reason);
    }
    for s in duplicates {
        say!("line {}: duplicate: {}", s.line, s.reason);
    }
    for (line, serial, error) in &o.failed {
        say!("line {line}: {serial} not written: {error}");
    }
    if !o.invalid_tokens.is_empty() {
        say!(
            "the factory file's tokens for these serials are NOT valid (their record was not written): {}",
            o.invalid_tokens
                .iter()
                .map(Serial::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    say!(
        "enrolled {}, existing {}, malformed {}, duplicate {}, failed {}; tokens in {}",
        o.enrolled.len(),
        o.existing.len() + o.raced.len(),
        malformed.len(),
        duplicates.len(),
        o.failed.len(),
        factory.display()
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use base64::Engine as _;

    use super::*;

    fn parse_str(s: &str) -> Parsed {
        parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn rows_parse_with_their_line_numbers_in_any_column_order() {
        let key = rcgen::KeyPair::generate().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(rcgen::PublicKeyData::subject_public_key_info(&key));
        let csv = format!(
            "policy,serial,attributes,thing_name,public_key\n\
             ,ZK-1,,,\n\
             p1,ZK-2,site=lab;floor=2,thing-2,{b64}\n"
        );
        let p = parse_str(&csv);
        assert!(
            p.malformed.is_empty() && p.duplicates.is_empty(),
            "{:?} {:?}",
            p.malformed,
            p.duplicates
        );
        assert_eq!(p.rows.len(), 2);
        let (a, b) = (&p.rows[0], &p.rows[1]);
        assert_eq!(
            (a.line, a.serial.as_str(), a.thing_name.as_str()),
            (2, "ZK-1", "ZK-1")
        );
        assert!(a.policy.is_none() && a.attributes.is_empty() && a.key.is_none());
        assert_eq!((b.line, b.thing_name.as_str()), (3, "thing-2"));
        assert_eq!(b.policy.as_ref().unwrap().as_str(), "p1");
        assert_eq!(
            b.attributes.iter().collect::<Vec<_>>(),
            [("floor", "2"), ("site", "lab")]
        );
        assert_eq!(
            b.key.as_ref().unwrap(),
            &crate::public_key::fingerprint_from_pem(&key.public_key_pem()).unwrap()
        );
    }

    #[test]
    fn every_kind_of_bad_row_is_reported_by_line_and_the_rest_kept() {
        let csv = "serial,thing_name,policy,attributes,public_key\n\
                   OK-1,,,,\n\
                   bad serial,,,,\n\
                   OK-2,bad thing,,,\n\
                   OK-3,,bad policy!,,\n\
                   OK-4,,,novalue,\n\
                   OK-5,,,a=1;b=2;c=3;d=4,\n\
                   OK-6,,,,not-a-key\n\
                   OK-7,,\n\
                   OK-1,,,,\n\
                   OK-8,OK-1-thing,,,\n\
                   OK-9,OK-1-thing,,,\n\
                   \n\
                   OK-10,,,,\n";
        let p = parse_str(csv);
        let lines = |s: &[Skipped]| s.iter().map(|s| s.line).collect::<Vec<_>>();
        assert_eq!(
            lines(&p.malformed),
            [3, 4, 5, 6, 7, 8, 9],
            "{:?}",
            p.malformed
        );
        assert_eq!(lines(&p.duplicates), [10, 12], "{:?}", p.duplicates);
        assert!(
            p.duplicates[0].reason.contains("line 2"),
            "{:?}",
            p.duplicates
        );
        assert!(
            p.duplicates[1].reason.contains("line 11"),
            "{:?}",
            p.duplicates
        );
        let kept: Vec<_> = p.rows.iter().map(|r| (r.line, r.serial.as_str())).collect();
        assert_eq!(kept, [(2, "OK-1"), (11, "OK-8"), (14, "OK-10")]);
        assert!(p.malformed[6].reason.contains("3 cells, the header has 5"));
    }

    #[test]
    fn the_same_key_on_two_rows_is_a_duplicate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(rcgen::PublicKeyData::subject_public_key_info(&key));
        let p = parse_str(&format!("serial,public_key\nA,{b64}\nB,{b64}\n"));
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.duplicates[0].line, 3);
    }

    #[test]
    fn a_bad_header_stops_everything() {
        for bad in [
            "",
            "thing_name,policy\nA,B\n",
            "serial,colour\nA,red\n",
            "serial,serial\n",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        // Case and a byte-order mark do not matter.
        assert_eq!(parse_str("\u{feff}Serial\nA\n").rows.len(), 1);
    }

    #[test]
    fn quoted_cells_and_crlf_are_csv_as_usual() {
        let p = parse_str("serial,attributes\r\n\"ZK-1\",\"site=a;b=c\"\r\nZK-2,\r\n");
        assert_eq!(p.rows.len(), 2, "{:?}", p.malformed);
        assert_eq!(p.rows[0].attributes.iter().count(), 2);
        assert_eq!(p.rows[1].line, 3);
    }

    #[test]
    fn messages_do_not_repeat_a_long_cell() {
        let long = "x".repeat(500);
        let p = parse_str(&format!("serial\n{long} y\n"));
        assert!(
            p.malformed[0].reason.len() < 200,
            "{}",
            p.malformed[0].reason
        );
    }
}
