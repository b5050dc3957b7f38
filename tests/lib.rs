//! Integration tests live in `local_stack/`; they run against the stack `make up` starts.
