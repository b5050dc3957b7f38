//! Error answers in each service's own wire shape, as the SDK's deserializers and retry
//! classifiers expect them.
//!
//! - DynamoDB (awsJson1_0): `400 {"__type": "com.amazonaws.dynamodb.v20120810#Code", "message"}`;
//!   throttling is `ProvisionedThroughputExceededException` (item operations) or
//!   `ThrottlingException`; 5xx is `500 InternalServerError`.
//! - ACM-PCA (awsJson1_1): `400 {"__type": "ThrottlingException", "message"}`; 5xx is
//!   `500 InternalFailure` (AWS's common errors).
//! - AWS IoT (restJson1): the code in `x-amzn-ErrorType`, `{"message"}` as the body;
//!   `429 ThrottlingException`, `503 ServiceUnavailableException`.

use bytes::Bytes;
use hyper::http::{HeaderValue, Response, StatusCode};

use super::operation::{Operation, Protocol};
use super::rules::Fault;

/// The code and status AWS answers for a fault, unless a rule overrides them.
pub fn default_error(op: &Operation, fault: Fault) -> (&'static str, u16) {
    match (op.service.as_str(), fault, op.protocol) {
        ("dynamodb", Fault::Throttle, _) => ("ProvisionedThroughputExceededException", 400),
        ("dynamodb", _, _) => ("InternalServerError", 500),
        (_, Fault::Throttle, Protocol::AwsJson { .. }) => ("ThrottlingException", 400),
        (_, _, Protocol::AwsJson { .. }) => ("InternalFailure", 500),
        (_, Fault::Throttle, Protocol::RestJson) => ("ThrottlingException", 429),
        (_, _, Protocol::RestJson) => ("ServiceUnavailableException", 503),
    }
}

fn message(code: &str) -> &'static str {
    if code.contains("Throughput") || code.contains("Throttl") {
        "Rate exceeded"
    } else {
        "The service is unavailable. Please try again later."
    }
}

/// An error answer the SDK reads as `code` from `op`'s service.
pub fn error_response(
    op: &Operation,
    code: &str,
    status: u16,
    request_id: &str,
) -> Response<Bytes> {
    let message = message(code);
    let (content_type, body) = match op.protocol {
        Protocol::AwsJson { content_type } => {
            let type_name = if op.service == "dynamodb" {
                format!("com.amazonaws.dynamodb.v20120810#{code}")
            } else {
                code.to_owned()
            };
            (
                content_type,
                serde_json::json!({"__type": type_name, "message": message}),
            )
        }
        Protocol::RestJson => ("application/json", serde_json::json!({"message": message})),
    };
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    if op.protocol == Protocol::RestJson {
        if let Ok(code) = HeaderValue::from_str(code) {
            headers.insert("x-amzn-errortype", code);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn op(service: &str, protocol: Protocol) -> Operation {
        Operation {
            service: service.into(),
            name: "X".into(),
            protocol,
        }
    }

    #[test]
    fn each_service_gets_its_own_shape() {
        let ddb = op(
            "dynamodb",
            Protocol::AwsJson {
                content_type: "application/x-amz-json-1.0",
            },
        );
        let (code, status) = default_error(&ddb, Fault::Throttle);
        let r = error_response(&ddb, code, status, "r1");
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(
            body["__type"],
            "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
        );
        assert_eq!(r.headers()["content-type"], "application/x-amz-json-1.0");
        assert!(r.headers().get("x-amzn-errortype").is_none());
        assert_eq!(
            default_error(&ddb, Fault::ServerError),
            ("InternalServerError", 500)
        );

        let iot = op("iot", Protocol::RestJson);
        let (code, status) = default_error(&iot, Fault::Throttle);
        let r = error_response(&iot, code, status, "r2");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["x-amzn-errortype"], "ThrottlingException");
        assert_eq!(
            default_error(&iot, Fault::ServerError),
            ("ServiceUnavailableException", 503)
        );

        let pca = op(
            "acm-pca",
            Protocol::AwsJson {
                content_type: "application/x-amz-json-1.1",
            },
        );
        let r = error_response(&pca, "ThrottlingException", 400, "r3");
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(body["__type"], "ThrottlingException");
        assert_eq!(
            default_error(&pca, Fault::ServerError),
            ("InternalFailure", 500)
        );
    }

    #[test]
    fn an_unusable_status_falls_back_to_400() {
        let iot = op("iot", Protocol::RestJson);
        assert_eq!(error_response(&iot, "X", 1000, "r").status(), 400);
    }
}
