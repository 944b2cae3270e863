//! Fuzz target: the vhdx reader on arbitrary bytes must never panic, in strict and lenient mode,
//! through open, extent, read_at, info and check.
#![no_main]

#[path = "common/disk.rs"]
mod common;

use ims_diskfmt::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::exercise(data, Format::Vhdx));
