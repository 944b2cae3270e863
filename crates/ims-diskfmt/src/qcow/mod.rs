//! qcow version 1: header layout, reader and writer. No refcounts: allocation appends.

pub(crate) mod header;
mod reader;
mod writer;

pub(crate) use reader::QcowDisk;
pub(crate) use writer::create;
