//! Fuzz target: the whole `inspect` pipeline (probe, partitions, LVM, filesystems, OS facts) on
//! arbitrary bytes never panics.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ims_guest::inspect(Arc::new(data.to_vec()));
});
