//! Fuzz target: `probe` and `check_declared` on arbitrary bytes must never panic, and an
//! `InspectionWindow` streamed from the same bytes must give the same answer.
#![no_main]

use ims_diskfmt::probe::{InspectionWindow, probe};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = probe(&data.to_vec());
    if let Ok(found) = &whole {
        for declared in ["raw", "qcow2", "vmdk", "vhd", "iso", "aki"] {
            let _ = found.check_declared(declared);
        }
    }
    let mut builder = InspectionWindow::builder();
    for chunk in data.chunks(4093) {
        builder.push(chunk);
    }
    let streamed = probe(&builder.finish());
    assert_eq!(format!("{whole:?}"), format!("{streamed:?}"));
});
