//! Huawei ZVHD (one zlib stream) and ZVHD2 (indexed zlib/zstd blocks), read and written from a
//! clean-room description of the public driver (`formats.md` §8.3–8.4).

pub(crate) mod header;
pub(crate) mod parser;
pub(crate) mod reader;
pub(crate) mod writer;
