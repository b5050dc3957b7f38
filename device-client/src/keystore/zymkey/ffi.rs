//! The crate's only `unsafe`: Zymbit's C API, `libzk_app_utils`, loaded at run time so the
//! crate builds and its tests run where the library is absent.
//!
//! Relied on, from Zymbit's published `zk_app_utils.h` (and its Python and Go bindings, which
//! call the same functions the same way):
//!
//! ```c
//! typedef void* zkCTX;
//! int zkOpen(zkCTX* ctx);                       // 0 on success, < 0 on failure
//! int zkClose(zkCTX ctx);
//! int zkExportPubKey(zkCTX ctx, uint8_t** pk, int* pk_sz, int pubkey_slot, bool slot_is_foreign);
//! int zkGenECDSASigFromDigest(zkCTX ctx, const uint8_t* digest, int slot,
//!                             uint8_t** sig, int* sig_sz);
//! int zkGenKeyPair(zkCTX ctx, ZK_EC_KEY_TYPE type);   // HSM6/SCM: the new slot, < 0 on failure
//! ```
//!
//! `ZK_EC_KEY_TYPE` is a C enum whose first member, `ZK_NISTP256`, is 0 (an `int` in the ABI).
//! Buffers returned through `uint8_t**` are "created by this function and must be freed by the
//! application": with the C library's `free`. The digest is the 32 bytes of a SHA-256; the
//! public key comes back as `X || Y` (64 bytes) and the signature as `r || s` (64 bytes) for
//! P-256, which the safe wrapper checks.

#![allow(unsafe_code)]

use std::ffi::{c_int, c_void, OsStr};

use libloading::Library;

type ZkCtx = *mut c_void;
type OpenFn = unsafe extern "C" fn(ctx: *mut ZkCtx) -> c_int;
type CloseFn = unsafe extern "C" fn(ctx: ZkCtx) -> c_int;
type ExportPubKeyFn = unsafe extern "C" fn(
    ctx: ZkCtx,
    pk: *mut *mut u8,
    pk_sz: *mut c_int,
    slot: c_int,
    slot_is_foreign: bool,
) -> c_int;
type SignDigestFn = unsafe extern "C" fn(
    ctx: ZkCtx,
    digest: *const u8,
    slot: c_int,
    sig: *mut *mut u8,
    sig_sz: *mut c_int,
) -> c_int;
type GenKeyPairFn = unsafe extern "C" fn(ctx: ZkCtx, key_type: c_int) -> c_int;

/// `ZK_NISTP256` in `ZK_EC_KEY_TYPE`.
pub const ZK_NISTP256: c_int = 0;

/// Anything longer than this from the library is not a P-256 key or signature; it is not
/// copied (the buffer is still freed).
const MAX_BUFFER: usize = 1024;

#[derive(Debug)]
pub enum LoadError {
    /// dlopen failed.
    Library(String),
    /// The library lacks a function this client needs.
    Symbol(&'static str, String),
    /// `zkOpen` returned this code.
    Open(c_int),
}

/// An open Zymkey context and the functions that use it. Closed on drop.
pub struct Zymkey {
    ctx: ZkCtx,
    close: CloseFn,
    export_pub_key: ExportPubKeyFn,
    sign_digest: SignDigestFn,
    gen_key_pair: Option<GenKeyPairFn>,
    /// Keeps the code behind the function pointers above mapped; dropped after `Drop::drop`
    /// has closed the context.
    _library: Library,
}

// SAFETY: `zkCTX` is an opaque handle to the library's connection to its daemon, with no
// thread affinity; this type is only ever used through `&mut self` (the store keeps it behind
// a `Mutex`), so the library never sees two calls on one context at once.
unsafe impl Send for Zymkey {}

impl Zymkey {
    /// Loads the library at `path` (a file name is looked up the way `dlopen` does) and opens a
    /// context.
    pub fn open(path: &OsStr) -> Result<Self, LoadError> {
        // SAFETY: loading runs the library's initialisers; `libzk_app_utils` has none with
        // preconditions. The path is the operator's choice or Zymbit's library name.
        let library =
            unsafe { Library::new(path) }.map_err(|e| LoadError::Library(e.to_string()))?;

        // SAFETY (each `get`): the function types above are those of `zk_app_utils.h`; the
        // copied pointers stay valid because `library` lives as long as they do (same struct).
        let open: OpenFn = unsafe { symbol(&library, "zkOpen")? };
        let close: CloseFn = unsafe { symbol(&library, "zkClose")? };
        let export_pub_key: ExportPubKeyFn = unsafe { symbol(&library, "zkExportPubKey")? };
        let sign_digest: SignDigestFn = unsafe { symbol(&library, "zkGenECDSASigFromDigest")? };
        // Only HSM6 and SCM libraries are expected to have it; asked for only with
        // `--generate-key`.
        let gen_key_pair: Option<GenKeyPairFn> = unsafe { symbol(&library, "zkGenKeyPair") }.ok();

        let mut ctx: ZkCtx = std::ptr::null_mut();
        // SAFETY: `ctx` is a valid place for the library to write the new context into.
        let rc = unsafe { open(&mut ctx) };
        if rc < 0 || ctx.is_null() {
            return Err(LoadError::Open(rc));
        }
        Ok(Self {
            ctx,
            close,
            export_pub_key,
            sign_digest,
            gen_key_pair,
            _library: library,
        })
    }

    /// The public key in `slot` (not the foreign key ring), as the library returns it.
    pub fn export_pub_key(&mut self, slot: c_int) -> Result<Vec<u8>, c_int> {
        let mut buffer: *mut u8 = std::ptr::null_mut();
        let mut len: c_int = 0;
        // SAFETY: `self.ctx` is open; `buffer` and `len` are valid places for the outputs.
        let rc = unsafe { (self.export_pub_key)(self.ctx, &mut buffer, &mut len, slot, false) };
        if rc < 0 {
            return Err(rc);
        }
        // SAFETY: on success the library handed us `buffer` of `len` bytes to free.
        Ok(unsafe { take_buffer(buffer, len) })
    }

    /// ECDSA over a 32-byte digest with the key in `slot`, as the library returns it.
    pub fn sign_digest(&mut self, digest: &[u8; 32], slot: c_int) -> Result<Vec<u8>, c_int> {
        let mut buffer: *mut u8 = std::ptr::null_mut();
        let mut len: c_int = 0;
        // SAFETY: `digest` points at the 32 bytes the library reads; the outputs are valid.
        let rc =
            unsafe { (self.sign_digest)(self.ctx, digest.as_ptr(), slot, &mut buffer, &mut len) };
        if rc < 0 {
            return Err(rc);
        }
        // SAFETY: as in `export_pub_key`.
        Ok(unsafe { take_buffer(buffer, len) })
    }

    /// A new persistent key pair of `key_type`; its slot. `None` if the library has no
    /// `zkGenKeyPair` (Zymkey 4i and HSM4 libraries).
    pub fn gen_key_pair(&mut self, key_type: c_int) -> Option<c_int> {
        let generate = self.gen_key_pair?;
        // SAFETY: `self.ctx` is open; the call takes plain values.
        Some(unsafe { generate(self.ctx, key_type) })
    }
}

impl Drop for Zymkey {
    fn drop(&mut self) {
        // SAFETY: `self.ctx` was opened by `zkOpen` and is closed exactly once, here. The code
        // return is of no use at this point.
        let _ = unsafe { (self.close)(self.ctx) };
    }
}

/// # Safety
/// `T` must be the `unsafe extern "C" fn` type of the C function `name`.
unsafe fn symbol<T: Copy>(library: &Library, name: &'static str) -> Result<T, LoadError> {
    let mut c_name = Vec::with_capacity(name.len() + 1);
    c_name.extend_from_slice(name.as_bytes());
    c_name.push(0);
    // SAFETY: the caller vouches for `T`.
    unsafe { library.get::<T>(&c_name) }
        .map(|s| *s)
        .map_err(|e| LoadError::Symbol(name, e.to_string()))
}

/// Copies a buffer the library allocated and frees it with `free`, as Zymbit's API asks.
///
/// # Safety
/// `buffer` is null or was allocated with `malloc` by the library, with `len` readable bytes,
/// and is not used by anyone after this call.
unsafe fn take_buffer(buffer: *mut u8, len: c_int) -> Vec<u8> {
    if buffer.is_null() {
        return Vec::new();
    }
    let copied = match usize::try_from(len) {
        // SAFETY: the library wrote `len` bytes at `buffer`.
        Ok(n) if n <= MAX_BUFFER => unsafe { std::slice::from_raw_parts(buffer, n) }.to_vec(),
        _ => Vec::new(),
    };
    // SAFETY: allocated by the library with malloc and handed over to us; freed once.
    unsafe { libc::free(buffer.cast::<c_void>()) };
    copied
}
