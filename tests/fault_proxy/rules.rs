//! Fault rules, and how requests are counted so a rule can pick one call out of a workflow.
//!
//! An *invocation* is one SDK operation call with all its retries: the SDK sends the same
//! `amz-sdk-invocation-id` header on every attempt. The *occurrence* of an invocation is its
//! rank among the invocations of the same operation since the last reset (1-based), so "the
//! 2nd UpdateItem of a vend" is `{"operation": "UpdateItem", "occurrence": 2}` however many
//! attempts the 1st one took. A request without that header is an invocation of its own.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::operation::Operation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Answer the service's throttling error (not forwarded).
    Throttle,
    /// Answer the service's 5xx error (not forwarded).
    ServerError,
    /// Forward (the call commits), then close the connection without an answer.
    LoseAnswer,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Throttle => "throttle",
            Fault::ServerError => "server-error",
            Fault::LoseAnswer => "lose-answer",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `Name` or `service:Name` (e.g. `UpdateItem`, `iot:CreateCertificateFromCsr`).
    pub operation: String,
    /// Which invocation of the operation (1-based, since the last reset); every one if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrence: Option<u32>,
    pub fault: Fault,
    /// How many attempts of a matching invocation get the fault. Absent: every attempt for
    /// `throttle` and `server-error` (past any retry policy), the first only for `lose-answer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Overrides the error code (e.g. `ThrottlingException` instead of DynamoDB's
    /// `ProvisionedThroughputExceededException`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Overrides the HTTP status of the error answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl Rule {
    pub fn validate(&self) -> Result<(), String> {
        if self.operation.trim().is_empty() {
            return Err("operation must not be empty".into());
        }
        if self.occurrence == Some(0) {
            return Err("occurrence is 1-based".into());
        }
        if self.attempts == Some(0) {
            return Err("attempts must be at least 1 (omit it for every attempt)".into());
        }
        if let Some(status) = self.status {
            if !(400..=599).contains(&status) {
                return Err(format!("status {status} is not an error status"));
            }
            if self.fault == Fault::LoseAnswer {
                return Err("a lost answer has no status".into());
            }
        }
        if self.code.is_some() && self.fault == Fault::LoseAnswer {
            return Err("a lost answer has no error code".into());
        }
        Ok(())
    }

    fn applies(&self, op: &Operation, occurrence: u32, attempt: u32) -> bool {
        let attempts = self.attempts.unwrap_or(match self.fault {
            Fault::LoseAnswer => 1,
            Fault::Throttle | Fault::ServerError => u32::MAX,
        });
        op.is(&self.operation)
            && self.occurrence.is_none_or(|n| n == occurrence)
            && attempt <= attempts
    }
}

/// Where a request stands among the calls the proxy has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub occurrence: u32,
    /// 1-based attempt of its invocation, as seen by the proxy.
    pub attempt: u32,
}

/// Counts invocations per operation and attempts per invocation.
#[derive(Debug, Default)]
pub struct Tracker {
    invocations_per_operation: HashMap<String, u32>,
    /// invocation id -> (occurrence, attempts seen)
    invocations: HashMap<String, (u32, u32)>,
}

impl Tracker {
    pub fn position(&mut self, op: &Operation, invocation: Option<&str>) -> Position {
        if let Some((occurrence, attempts)) = invocation.and_then(|id| self.invocations.get_mut(id))
        {
            *attempts += 1;
            return Position {
                occurrence: *occurrence,
                attempt: *attempts,
            };
        }
        let count = self
            .invocations_per_operation
            .entry(op.qualified())
            .or_insert(0);
        *count += 1;
        let occurrence = *count;
        if let Some(id) = invocation {
            self.invocations.insert(id.to_owned(), (occurrence, 1));
        }
        Position {
            occurrence,
            attempt: 1,
        }
    }
}

/// The first rule that applies to a request, if any.
pub fn decide<'a>(rules: &'a [Rule], op: &Operation, at: Position) -> Option<&'a Rule> {
    rules
        .iter()
        .find(|r| r.applies(op, at.occurrence, at.attempt))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fault_proxy::operation::Protocol;

    fn op(service: &str, name: &str) -> Operation {
        Operation {
            service: service.into(),
            name: name.into(),
            protocol: Protocol::RestJson,
        }
    }

    fn rule(json: &str) -> Rule {
        let r: Rule = serde_json::from_str(json).unwrap();
        r.validate().unwrap();
        r
    }

    #[test]
    fn occurrences_count_invocations_not_attempts() {
        let mut t = Tracker::default();
        let update = op("dynamodb", "UpdateItem");
        assert_eq!(t.position(&update, Some("a")).occurrence, 1);
        assert_eq!(
            t.position(&update, Some("a")),
            Position {
                occurrence: 1,
                attempt: 2
            }
        );
        assert_eq!(
            t.position(&op("iot", "CreateThing"), Some("b")).occurrence,
            1
        );
        assert_eq!(t.position(&update, Some("c")).occurrence, 2);
        // No invocation id: every request is an invocation of its own.
        assert_eq!(t.position(&update, None).occurrence, 3);
        assert_eq!(t.position(&update, None).occurrence, 4);
    }

    #[test]
    fn a_rule_picks_one_invocation_and_all_its_attempts() {
        let rules = [rule(
            r#"{"operation": "UpdateItem", "occurrence": 2, "fault": "throttle"}"#,
        )];
        let update = op("dynamodb", "UpdateItem");
        let at = |occurrence, attempt| Position {
            occurrence,
            attempt,
        };
        assert!(decide(&rules, &update, at(1, 1)).is_none());
        assert!(decide(&rules, &update, at(2, 1)).is_some());
        assert!(decide(&rules, &update, at(2, 9)).is_some());
        assert!(decide(&rules, &update, at(3, 1)).is_none());
        assert!(decide(&rules, &op("dynamodb", "GetItem"), at(2, 1)).is_none());
    }

    #[test]
    fn a_lost_answer_is_lost_once_unless_told_otherwise() {
        let once = [rule(
            r#"{"operation": "iot:CreateThing", "fault": "lose-answer"}"#,
        )];
        let thing = op("iot", "CreateThing");
        let at = |attempt| Position {
            occurrence: 1,
            attempt,
        };
        assert!(decide(&once, &thing, at(1)).is_some());
        assert!(decide(&once, &thing, at(2)).is_none());
        let twice = [rule(
            r#"{"operation": "CreateThing", "fault": "lose-answer", "attempts": 2}"#,
        )];
        assert!(decide(&twice, &thing, at(2)).is_some());
        assert!(decide(&twice, &thing, at(3)).is_none());
        assert!(decide(&once, &op("dynamodb", "CreateThing"), at(1)).is_none());
    }

    #[test]
    fn malformed_rules_are_refused() {
        for bad in [
            r#"{"operation": "", "fault": "throttle"}"#,
            r#"{"operation": "X", "occurrence": 0, "fault": "throttle"}"#,
            r#"{"operation": "X", "attempts": 0, "fault": "throttle"}"#,
            r#"{"operation": "X", "status": 200, "fault": "throttle"}"#,
            r#"{"operation": "X", "status": 503, "fault": "lose-answer"}"#,
            r#"{"operation": "X", "code": "Boom", "fault": "lose-answer"}"#,
        ] {
            let r: Rule = serde_json::from_str(bad).unwrap();
            assert!(r.validate().is_err(), "{bad}");
        }
        for unparsable in [
            r#"{"operation": "X", "fault": "explode"}"#,
            r#"{"operation": "X", "fault": "throttle", "extra": 1}"#,
            r#"{"fault": "throttle"}"#,
            r#"{"operation": "X", "occurrence": -1, "fault": "throttle"}"#,
        ] {
            assert!(
                serde_json::from_str::<Rule>(unparsable).is_err(),
                "{unparsable}"
            );
        }
    }
}
