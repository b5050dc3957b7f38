//! Logging for the Lambda functions, as Lambda's advanced logging controls set it: JSON lines
//! when `AWS_LAMBDA_LOG_FORMAT` is `JSON`, text otherwise; the level from
//! `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else INFO.
//!
//! The runtime crate's own initialiser does the same with `tracing-subscriber`'s `env-filter`,
//! which compiles per-target directives with a regex engine that every bootstrap would carry.
//! A Lambda function's level is one level, so a level filter is all it needs; per-target
//! directives in `RUST_LOG` (`info,aws_smithy_runtime=debug`) are read as their default level.

use tracing_subscriber::filter::LevelFilter;

/// Installs the global subscriber, writing to stdout (Lambda sends it to CloudWatch Logs).
pub fn init() {
    init_with_writer(std::io::stdout);
}

/// Installs the global subscriber with another writer (a local tool writing to stderr, say).
pub fn init_with_writer<W>(writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let env = |name: &str| std::env::var(name).ok();
    let builder = tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .with_max_level(level(&env))
        .with_writer(writer);
    let json = env("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    // A second initialisation (a test calling it twice) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The level from the environment: `AWS_LAMBDA_LOG_LEVEL` wins over `RUST_LOG`; a directive
/// list counts by its default level (the part without `=`); anything unreadable is INFO.
fn level(env: &dyn Fn(&str) -> Option<String>) -> LevelFilter {
    let value = env("AWS_LAMBDA_LOG_LEVEL").or_else(|| env("RUST_LOG"));
    value
        .as_deref()
        .and_then(|v| {
            v.split(',')
                .map(str::trim)
                .find(|directive| !directive.contains('=') && !directive.is_empty())
        })
        .and_then(|level| level.parse().ok())
        .unwrap_or(LevelFilter::INFO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level_of(pairs: &[(&str, &str)]) -> LevelFilter {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        level(&move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn lambda_log_level_wins_then_rust_log_then_info() {
        assert_eq!(level_of(&[]), LevelFilter::INFO);
        assert_eq!(level_of(&[("RUST_LOG", "debug")]), LevelFilter::DEBUG);
        assert_eq!(
            level_of(&[("AWS_LAMBDA_LOG_LEVEL", "WARN"), ("RUST_LOG", "debug")]),
            LevelFilter::WARN
        );
        assert_eq!(
            level_of(&[("AWS_LAMBDA_LOG_LEVEL", "TRACE")]),
            LevelFilter::TRACE
        );
    }

    #[test]
    fn directives_count_by_their_default_level_and_nonsense_is_info() {
        assert_eq!(
            level_of(&[("RUST_LOG", "aws_smithy_runtime=debug,warn")]),
            LevelFilter::WARN
        );
        assert_eq!(level_of(&[("RUST_LOG", "cvm=debug")]), LevelFilter::INFO);
        assert_eq!(level_of(&[("RUST_LOG", "loud")]), LevelFilter::INFO);
        assert_eq!(level_of(&[("AWS_LAMBDA_LOG_LEVEL", "")]), LevelFilter::INFO);
    }
}
