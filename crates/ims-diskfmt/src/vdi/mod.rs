//! VDI (VirtualBox): the header layout, a random-access reader and a writer (dynamic and
//! static, qemu's layout: block map at 0x200, 1 MiB blocks).

pub(crate) mod header;
pub(crate) mod reader;
pub(crate) mod writer;
