//! The vend API end to end on the local stack: the real binaries, the real SDK calls, moto.
//! `make test` starts the stack and exports `.local/env`; run alone with `make up` first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod contract;
mod emulator;
mod fault_matrix;
mod fleet_standin;
mod proxy;
