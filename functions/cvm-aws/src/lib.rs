//! Adapters from the core's ports to AWS: DynamoDB for device records, AWS IoT for
//! certificates and things. Each SDK error is mapped once, here, keeping the operation, the
//! service's error code and the original error.

pub mod config;
pub mod dynamo;
pub mod error;
pub mod fleet_table;
pub mod iot;
pub mod logging;
pub mod pca;
pub mod sdk;
pub mod vend_app;
pub mod warm_up;

pub use dynamo::DynamoStore;
pub use iot::{describe_endpoints, IotIssuer, IotRegistry};

pub use sdk::{lambda_sdk_config, load_sdk_config};
