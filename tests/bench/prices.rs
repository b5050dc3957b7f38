//! Price constants for the cost per device (US East (N. Virginia), on-demand, without free
//! tiers). Each names the page that publishes it and what it was checked against on
//! [`READ_ON`]; "to confirm" marks a figure not seen on a page that day. Change them here when
//! AWS changes them.

/// The day the figures below were checked.
pub const READ_ON: &str = "2026-12-01";

/// AWS Lambda, Arm: USD per GB-second (first 7.5 billion GB-s per month) and per request.
/// <https://aws.amazon.com/lambda/pricing/>; checked against
/// <https://cloudchipr.com/blog/aws-lambda-pricing> (Arm $0.0000133334 per GB-s). The pricing
/// page also says init code is billed as duration.
pub const LAMBDA_ARM_GB_SECOND: f64 = 0.000_013_333_4;
pub const LAMBDA_REQUEST: f64 = 0.20 / 1e6;

/// Amazon API Gateway HTTP API: USD per request (first 300 million per month).
/// <https://aws.amazon.com/api-gateway/pricing/> (to confirm).
pub const HTTP_API_REQUEST: f64 = 1.00 / 1e6;

/// Amazon DynamoDB on-demand: USD per write request unit (1 KB) and read request unit
/// (4 KB, strongly consistent), after the November 2024 price cut.
/// <https://aws.amazon.com/dynamodb/pricing/on-demand/>; checked against
/// <https://airbyte.com/data-engineering-resources/dynamodb-pricing>.
pub const DYNAMODB_WRITE_UNIT: f64 = 0.625 / 1e6;
pub const DYNAMODB_READ_UNIT: f64 = 0.125 / 1e6;

/// AWS IoT Core registry operations, USD per operation. CreateThing and AttachThingPrincipal
/// are on the list of charged registry APIs; certificate and policy APIs
/// (CreateCertificateFromCsr, UpdateCertificate, AttachPolicy, RegisterCertificate*) are not.
/// The list: <https://aws.amazon.com/iot-core/pricing/additional-details/>; the rate:
/// <https://aws.amazon.com/iot-core/pricing/> (to confirm).
pub const IOT_REGISTRY_OPERATION: f64 = 1.25 / 1e6;
pub const IOT_CHARGED_REGISTRY_OPERATIONS: &[&str] = &[
    "CreateThing",
    "AttachThingPrincipal",
    "DescribeThing",
    "UpdateThing",
    "ListThingPrincipals",
    "ListPrincipalThings",
];

/// AWS Private CA, general-purpose mode: USD per certificate issued, by monthly volume (first
/// 1,000; 1,001 to 10,000; above 10,000; to confirm), and the CA's monthly fee ($400, seen on
/// the page). <https://aws.amazon.com/private-ca/pricing/>
pub const PCA_CERTIFICATE_TIERS: [(u64, f64); 3] =
    [(1_000, 0.75), (10_000, 0.35), (u64::MAX, 0.001)];
pub const PCA_MONTHLY_FEE: f64 = 400.0;
