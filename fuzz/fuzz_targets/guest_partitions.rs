//! Fuzz target: MBR/EBR/GPT parsing, the LVM PV label and metadata text, and LV mapping on
//! arbitrary bytes must never panic and must stay bounded.
#![no_main]

use std::sync::Arc;

use ims_guest::{Volume, lvm, part};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let vol = Volume::whole(Arc::new(data.to_vec()));
    let _ = part::read_partition_table(&vol);
    if let Ok(Some(pv)) = lvm::read_pv(&vol) {
        let _ = lvm::map_logical_volumes(&[pv]);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lvm::parse_metadata(text);
    }
});
