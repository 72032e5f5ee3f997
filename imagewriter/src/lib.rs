//! Streams OS images onto block devices and writes config drives.
//!
//! The crate is synchronous on purpose: the agent runs each image write on a dedicated
//! thread, and a plain `Read` → hash → `Write` chain is the easiest thing to reason about
//! when a mistake can brick a disk.
//!
//! Modules:
//! - [`sys`]: the block-device ioctls (the only `unsafe` in the crate).
//! - [`checksum`]: streaming md5/sha256/sha512 and checksum-file parsing.
//! - [`download`]: HTTP(S) fetching of images, checksum files and config drives.
//! - [`write`](mod@write): the image write (hold back the first MiB, verify, then commit).
//! - [`format`](mod@format): which formats are written and which refused (from the bytes).
//! - [`qcow2`]: qcow2 → raw while streaming.
//! - [`pipeline`]: the download/hash/convert/write stages and their buffers.
//! - [`partition`]: in-process GPT/MBR reading and editing.
//! - [`configdrive`]: decoding a config drive and writing it into a `config-2` partition.

pub mod checksum;
pub mod configdrive;
pub mod download;
pub mod error;
pub mod format;
pub mod io;
pub mod partition;
pub mod pipeline;
pub mod qcow2;
pub mod sys;
pub mod write;

pub use error::ImageError;
