//! Adapters from the core's ports to AWS: DynamoDB for device records, AWS IoT for
//! certificates and things. Each SDK error is mapped once, here, keeping the operation, the
//! service's error code and the original error.

pub mod config;
pub mod dynamo;
pub mod error;
pub mod fleet_table;
pub mod iot;
pub mod pca;
pub mod vend_app;

pub use dynamo::DynamoStore;
pub use iot::{describe_endpoints, IotIssuer, IotRegistry};

/// Loads the SDK configuration once (region, credentials, `AWS_ENDPOINT_URL` override).
/// Building it is the expensive part; clients made from it are cheap.
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}
