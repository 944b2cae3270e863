//! VMDK: the hosted sparse header, descriptors, a random-access reader (monolithicSparse and
//! both streamOptimized layouts) and a writer (monolithicSparse, VMware-layout
//! streamOptimized).

pub(crate) mod descriptor;
pub(crate) mod header;
pub(crate) mod reader;
pub(crate) mod writer;
