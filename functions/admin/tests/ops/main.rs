//! `cvm-admin` against the local stack (`make up`, then export `.local/env`): the real
//! binary, the stack's vend APIs (both issuer modes), moto's DynamoDB, AWS IoT and Private CA.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bulk;
mod claim;
mod enroll;
mod helpers;
mod lifecycle;
mod report;
