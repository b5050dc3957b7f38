//! Integration tests live in `local_stack/`; they run against the stack `make up` starts.
//! The library holds what tests and benchmarks share: the fault-injecting proxy.

pub mod fault_proxy;
