//! QED: header layout, reader, consistency check and writer. No refcounts: every cluster is
//! referenced at most once.

mod check;
pub(crate) mod header;
mod reader;
mod writer;

pub(crate) use reader::QedDisk;
pub(crate) use writer::create;
