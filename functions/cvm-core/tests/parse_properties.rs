//! Properties of the parsers of untrusted input: they never panic, and what they accept
//! obeys the rule they state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cvm_core::{Csr, Serial, Token};
use proptest::prelude::*;

proptest! {
    #[test]
    fn serial_accepts_exactly_its_alphabet(raw in ".{0,140}") {
        let ok = !raw.is_empty() && raw.len() <= 128
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'));
        prop_assert_eq!(Serial::parse(&raw).is_ok(), ok);
    }

    #[test]
    fn token_accepts_exactly_its_alphabet(raw in "[A-Za-z0-9_+ -]{0,140}") {
        let ok = (16..=128).contains(&raw.len())
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        prop_assert_eq!(Token::parse(&raw).is_ok(), ok);
    }

    #[test]
    fn csr_parser_never_panics_on_arbitrary_text(raw in ".{0,4000}") {
        let _ = Csr::parse_pem(&raw);
    }

    #[test]
    fn csr_parser_never_panics_on_arbitrary_der(der in proptest::collection::vec(any::<u8>(), 0..2048)) {
        use base64::Engine as _;
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        prop_assert!(Csr::parse_pem(&pem).is_err());
    }
}
