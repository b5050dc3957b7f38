//! Table-wide operations on the device table, for ops tools: a paginated scan into records,
//! an existence check for many serials at once, and bulk enrollment writes.
//!
//! Bulk writes are `TransactWriteItems` of at most [`MAX_TRANSACTION_ITEMS`] puts, each
//! conditional on `attribute_not_exists(serial)`: a serial enrolled concurrently (by another
//! run, or by hand) is never overwritten. A cancelled transaction says, item by item, why
//! (its cancellation reasons): an item whose condition failed is reported as existing (or as
//! ours, when the item in the table is exactly the one we wrote: a lost answer to an earlier
//! attempt), items cancelled only because of others, throttled or in conflict are sent again
//! with a growing pause, and anything else is reported as failed. Every attempt carries its
//! own `ClientRequestToken`, so the SDK's own retries of one attempt cannot apply it twice.
//! Concurrency between batches is the caller's to choose: each function here handles one
//! batch.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use aws_sdk_dynamodb::Client;
use cvm_core::ports::{FailureKind, PortError};
use cvm_core::provider::IdempotencyToken;
use cvm_core::{DeviceRecord, Serial};

use crate::dynamo::{enrollment_item, record_from_item, Item};
use crate::error::port_error;

/// DynamoDB's limit of actions in one `TransactWriteItems`.
pub const MAX_TRANSACTION_ITEMS: usize = 100;

/// DynamoDB's limit of keys in one `BatchGetItem`.
pub const MAX_BATCH_GET_KEYS: usize = 100;

/// Attempts of one batch before its remaining items are reported as failed.
const MAX_ATTEMPTS: u32 = 8;

/// The first pause before an attempt is repeated; it doubles per attempt up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// The pause before attempt `attempt` (1-based, the first repetition is attempt 1), with up
/// to a quarter of jitter so that concurrent batches throttled together do not come back
/// together.
fn pause(attempt: u32) -> Duration {
    let base = FIRST_PAUSE
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(MAX_PAUSE);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = base.as_millis() as u64 / 4 * u64::from(nanos % 1000) / 1000;
    base + Duration::from_millis(jitter)
}

/// Which records a scan returns. The filter runs in DynamoDB (less to transfer); the scan
/// still reads, and is billed for, the whole table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanFilter {
    All,
    /// Records whose `status` attribute is this (`enrolled`, `claimed`, `issued`, `revoked`).
    Status(String),
    /// Records whose lockout window is still open at this time (seconds since the epoch).
    LockedAt(i64),
}

/// An item that is not a readable record. A scan reports it and goes on.
#[derive(Debug)]
pub struct UnreadableItem {
    /// The item's `serial`, when it has one.
    pub serial: Option<String>,
    pub error: PortError,
}

/// One page of a scan.
#[derive(Debug)]
pub struct ScanPage {
    pub records: Vec<Result<DeviceRecord, UnreadableItem>>,
}

/// A paginated, strongly consistent scan of the device table into records (a report must see
/// every certificate id written before it started).
pub struct RecordScan {
    client: Client,
    table: String,
    filter: ScanFilter,
    next: Option<Item>,
    done: bool,
}

impl RecordScan {
    pub fn new(client: Client, table: impl Into<String>, filter: ScanFilter) -> Self {
        Self {
            client,
            table: table.into(),
            filter,
            next: None,
            done: false,
        }
    }

    /// The next page, or `None` when the table has been read to its end.
    pub async fn next_page(&mut self) -> Result<Option<ScanPage>, PortError> {
        if self.done {
            return Ok(None);
        }
        let mut request = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .set_exclusive_start_key(self.next.take());
        match &self.filter {
            ScanFilter::All => {}
            ScanFilter::Status(status) => {
                request = request
                    .filter_expression("#status = :status")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", AttributeValue::S(status.clone()));
            }
            ScanFilter::LockedAt(now) => {
                request = request
                    .filter_expression("#lockedUntil > :now")
                    .expression_attribute_names("#lockedUntil", "lockedUntil")
                    .expression_attribute_values(":now", AttributeValue::N(now.to_string()));
            }
        }
        let out = request
            .send()
            .await
            .map_err(|e| port_error("dynamodb:Scan", e))?;
        self.next = out.last_evaluated_key.filter(|k| !k.is_empty());
        self.done = self.next.is_none();
        let records = out
            .items
            .unwrap_or_default()
            .iter()
            .map(|item| {
                record_from_item(item).map_err(|error| UnreadableItem {
                    serial: match item.get("serial") {
                        Some(AttributeValue::S(s)) => Some(s.clone()),
                        _ => None,
                    },
                    error,
                })
            })
            .collect();
        Ok(Some(ScanPage { records }))
    }
}

/// Which of these serials (at most [`MAX_BATCH_GET_KEYS`], no repeats) have a record, by one
/// strongly consistent `BatchGetItem` that reads only the key (keys DynamoDB leaves
/// unprocessed are asked again after a pause).
pub async fn existing_serials(
    client: &Client,
    table: &str,
    serials: &[Serial],
) -> Result<Vec<Serial>, PortError> {
    const OP: &str = "dynamodb:BatchGetItem";
    if serials.len() > MAX_BATCH_GET_KEYS {
        return Err(PortError::new(FailureKind::Other, OP).with_code("TooManyKeys"));
    }
    let keys: Vec<Item> = serials
        .iter()
        .map(|s| HashMap::from([("serial".to_owned(), AttributeValue::S(s.as_str().into()))]))
        .collect();
    let mut pending = Some(
        KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .projection_expression("#serial")
            .expression_attribute_names("#serial", "serial")
            .consistent_read(true)
            .build()
            .map_err(|e| PortError::new(FailureKind::Other, OP).with_source(e))?,
    );
    let mut found = Vec::new();
    let mut attempt = 0;
    while let Some(request) = pending.take() {
        if attempt > 0 {
            if attempt >= MAX_ATTEMPTS {
                return Err(PortError::new(FailureKind::Throttled, OP).with_code("UnprocessedKeys"));
            }
            tokio::time::sleep(pause(attempt)).await;
        }
        attempt += 1;
        let out = client
            .batch_get_item()
            .request_items(table, request)
            .send()
            .await
            .map_err(|e| port_error(OP, e))?;
        for item in out
            .responses
            .unwrap_or_default()
            .remove(table)
            .unwrap_or_default()
        {
            if let Some(AttributeValue::S(s)) = item.get("serial") {
                found.push(Serial::parse(s).map_err(|_| {
                    PortError::new(FailureKind::Other, OP).with_code("CorruptRecord(serial)")
                })?);
            }
        }
        pending = out
            .unprocessed_keys
            .and_then(|mut u| u.remove(table))
            .filter(|k| !k.keys().is_empty());
    }
    Ok(found)
}

/// What happened to one enrollment of a batch.
#[derive(Debug)]
pub enum EnrollmentWrite {
    /// Written by this batch.
    Created,
    /// The serial has a record this batch did not write: left as it was.
    Existing,
    /// Not written.
    Failed(PortError),
}

/// Writes new enrollments (at most [`MAX_TRANSACTION_ITEMS`], distinct serials), each only
/// if its serial has no record. Returns one outcome per record, in order. Errors that are
/// not about single items (throttling, the service unavailable) are retried with backoff;
/// when the attempts run out, the items not written are [`EnrollmentWrite::Failed`].
pub async fn create_enrollments(
    client: &Client,
    table: &str,
    records: &[DeviceRecord],
) -> Vec<EnrollmentWrite> {
    const OP: &str = "dynamodb:TransactWriteItems";
    let mut outcomes: Vec<Option<EnrollmentWrite>> = records.iter().map(|_| None).collect();
    if records.len() > MAX_TRANSACTION_ITEMS {
        return records
            .iter()
            .map(|_| {
                EnrollmentWrite::Failed(
                    PortError::new(FailureKind::Other, OP).with_code("TooManyItems"),
                )
            })
            .collect();
    }
    let items: Vec<Item> = records.iter().map(enrollment_item).collect();
    let mut pending: Vec<usize> = (0..records.len()).collect();
    let mut last_error: Option<PortError> = None;
    let mut attempt = 0;
    while !pending.is_empty() && attempt < MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(pause(attempt)).await;
        }
        attempt += 1;
        let token = match IdempotencyToken::random() {
            Ok(t) => t,
            Err(e) => {
                last_error = Some(e);
                break;
            }
        };
        let mut actions = Vec::with_capacity(pending.len());
        let mut build_error = None;
        for &i in &pending {
            match Put::builder()
                .table_name(table)
                .set_item(Some(items[i].clone()))
                .condition_expression("attribute_not_exists(#serial)")
                .expression_attribute_names("#serial", "serial")
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .build()
            {
                Ok(put) => actions.push(TransactWriteItem::builder().put(put).build()),
                Err(e) => build_error = Some(e),
            }
        }
        if let Some(e) = build_error {
            last_error = Some(PortError::new(FailureKind::Other, OP).with_source(e));
            break;
        }
        let result = client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .client_request_token(token.as_str())
            .send()
            .await;
        match result {
            Ok(_) => {
                for &i in &pending {
                    outcomes[i] = Some(EnrollmentWrite::Created);
                }
                pending.clear();
            }
            Err(e) => {
                let reasons = match e.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                        Some(c.cancellation_reasons().to_vec())
                    }
                    _ => None,
                };
                match reasons {
                    Some(reasons) if reasons.len() == pending.len() => {
                        let mut retry = Vec::new();
                        for (&i, reason) in pending.iter().zip(&reasons) {
                            let code = reason.code().unwrap_or("None");
                            match reason_action(code) {
                                ReasonAction::Exists => {
                                    // Our own item from an attempt whose answer was lost is
                                    // ours; anything else is someone else's record.
                                    let ours = reason.item() == Some(&items[i]);
                                    outcomes[i] = Some(if ours {
                                        EnrollmentWrite::Created
                                    } else {
                                        EnrollmentWrite::Existing
                                    });
                                }
                                ReasonAction::Retry => retry.push(i),
                                ReasonAction::Fail => {
                                    let mut err =
                                        PortError::new(FailureKind::Other, OP).with_code(code);
                                    if let Some(m) = reason.message() {
                                        err = err.with_source(ReasonMessage(m.to_owned()));
                                    }
                                    outcomes[i] = Some(EnrollmentWrite::Failed(err));
                                }
                            }
                        }
                        pending = retry;
                        last_error = Some(
                            PortError::new(FailureKind::Throttled, OP)
                                .with_code("TransactionCanceledException"),
                        );
                    }
                    _ => {
                        // A 5xx the SDK's own retries did not get past is still worth
                        // another attempt after a longer pause.
                        let server_error = e
                            .raw_response()
                            .is_some_and(|r| r.status().is_server_error());
                        let err = port_error(OP, e);
                        let transient = server_error
                            || matches!(
                                err.kind,
                                FailureKind::Throttled | FailureKind::Unavailable
                            )
                            || err.code.as_deref() == Some("TransactionInProgressException");
                        last_error = Some(err);
                        if !transient {
                            break;
                        }
                    }
                }
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                EnrollmentWrite::Failed(match &last_error {
                    Some(e) => copy_error(e),
                    None => PortError::new(FailureKind::Other, OP).with_code("NotAttempted"),
                })
            })
        })
        .collect()
}

/// What to do with one item of a cancelled transaction, from its cancellation reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReasonAction {
    /// Its condition failed: the serial has a record.
    Exists,
    /// Cancelled because of another item, or for a transient cause: send it again.
    Retry,
    /// Anything else (a validation error, say): sending it again would not help.
    Fail,
}

fn reason_action(code: &str) -> ReasonAction {
    match code {
        "ConditionalCheckFailed" => ReasonAction::Exists,
        "None"
        | "TransactionConflict"
        | "ThrottlingError"
        | "ProvisionedThroughputExceeded"
        | "RequestLimitExceeded" => ReasonAction::Retry,
        _ => ReasonAction::Fail,
    }
}

/// The same failure for another item (a [`PortError`] is not `Clone`: its cause is carried as
/// text).
fn copy_error(e: &PortError) -> PortError {
    let mut copy = PortError::new(e.kind, e.operation);
    copy.code = e.code.clone();
    match &e.source {
        Some(source) => copy.with_source(ReasonMessage(source.to_string())),
        None => copy,
    }
}

/// The message DynamoDB gave with a cancellation reason.
#[derive(Debug)]
struct ReasonMessage(String);

impl std::fmt::Display for ReasonMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReasonMessage {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_and_are_capped() {
        let first = pause(1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(125));
        let late = pause(30);
        assert!(late >= MAX_PAUSE && late <= MAX_PAUSE + MAX_PAUSE / 4);
    }

    #[test]
    fn cancellation_reasons_decide_existing_retry_or_fail() {
        assert_eq!(
            reason_action("ConditionalCheckFailed"),
            ReasonAction::Exists
        );
        for transient in [
            "None",
            "TransactionConflict",
            "ThrottlingError",
            "ProvisionedThroughputExceeded",
            "RequestLimitExceeded",
        ] {
            assert_eq!(reason_action(transient), ReasonAction::Retry, "{transient}");
        }
        for permanent in ["ValidationError", "ItemCollectionSizeLimitExceeded", ""] {
            assert_eq!(reason_action(permanent), ReasonAction::Fail, "{permanent}");
        }
    }

    #[test]
    fn a_copied_error_keeps_kind_operation_code_and_cause() {
        let e = PortError::new(FailureKind::Throttled, "dynamodb:TransactWriteItems")
            .with_code("ThrottlingException")
            .with_source(ReasonMessage("slow down".into()));
        let c = copy_error(&e);
        assert_eq!(
            (c.kind, c.operation, c.code.as_deref()),
            (e.kind, e.operation, Some("ThrottlingException"))
        );
        assert_eq!(c.to_string(), e.to_string());
    }
}
