//! The cold-start reference of `make bench`: a `lambda_runtime` function without the AWS SDK,
//! built the same way as the project's bootstraps (`cargo lambda build --release`), with the
//! same kind of logging set-up (a fmt subscriber with a level filter). It answers
//! `{"hello": <name>}`.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .init();
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        let name = event
            .payload
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("world")
            .to_owned();
        Ok::<_, Error>(json!({ "hello": name }))
    }))
    .await
}
