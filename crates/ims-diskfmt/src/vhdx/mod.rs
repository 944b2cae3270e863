//! Microsoft VHDX: fixed and dynamic disks read (with log replay) and written; differencing
//! disks refused (`formats.md` §7.6).

pub(crate) mod header;
pub(crate) mod log;
pub(crate) mod parser;
pub(crate) mod reader;
pub(crate) mod writer;
