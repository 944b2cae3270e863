//! Microsoft VHD ("vpc"): fixed and dynamic disks read and written, differencing disks refused
//! (`formats.md` §7.1–7.5).

pub(crate) mod header;
pub(crate) mod parser;
pub(crate) mod reader;
pub(crate) mod writer;
