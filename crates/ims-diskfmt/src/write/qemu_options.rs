//! qemu-img style `-o key=value` options as writers consume them: typed getters, and an error
//! naming every key a writer did not use.

use std::collections::{BTreeMap, BTreeSet};

use super::Sink;
use crate::Format;
use crate::disk::DiskError;

/// Reads a writer's options; [`OptionReader::finish`] rejects the keys nobody asked for.
pub(crate) struct OptionReader<'a> {
    format: Format,
    options: &'a BTreeMap<String, String>,
    used: BTreeSet<&'a str>,
}

impl<'a> OptionReader<'a> {
    pub(crate) fn new(format: Format, options: &'a BTreeMap<String, String>) -> Self {
        OptionReader {
            format,
            options,
            used: BTreeSet::new(),
        }
    }

    fn invalid(&self, key: &str, value: &str, expected: &str) -> DiskError {
        DiskError::unsupported(format!(
            "{} option {key}={value} (expected {expected})",
            self.format
        ))
    }

    /// The raw value of `key`, if given.
    pub(crate) fn text(&mut self, key: &'static str) -> Option<&'a str> {
        let (k, v) = self.options.get_key_value(key)?;
        self.used.insert(k.as_str());
        Some(v.as_str())
    }

    /// One of `choices`, or `default`.
    pub(crate) fn choice(
        &mut self,
        key: &'static str,
        choices: &[&'static str],
        default: &'static str,
    ) -> Result<&'static str, DiskError> {
        let Some(value) = self.text(key) else {
            return Ok(default);
        };
        choices
            .iter()
            .find(|c| **c == value)
            .copied()
            .ok_or_else(|| self.invalid(key, value, &choices.join("|")))
    }

    /// `on`/`off` (qemu also accepts `true`/`false`).
    pub(crate) fn flag(&mut self, key: &'static str, default: bool) -> Result<bool, DiskError> {
        match self.text(key) {
            None => Ok(default),
            Some("on" | "true") => Ok(true),
            Some("off" | "false") => Ok(false),
            Some(other) => Err(self.invalid(key, other, "on|off")),
        }
    }

    /// A size with an optional k/M/G suffix (powers of 1024, as qemu reads them).
    pub(crate) fn size(&mut self, key: &'static str, default: u64) -> Result<u64, DiskError> {
        let Some(value) = self.text(key) else {
            return Ok(default);
        };
        parse_size(value).ok_or_else(|| self.invalid(key, value, "a size such as 65536 or 64k"))
    }

    /// Fails naming the first option no getter asked for.
    pub(crate) fn finish(self) -> Result<(), DiskError> {
        match self
            .options
            .keys()
            .find(|k| !self.used.contains(k.as_str()))
        {
            None => Ok(()),
            Some(key) => Err(DiskError::unsupported(format!(
                "{} option {key}",
                self.format
            ))),
        }
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Writes `buf` at `offset`, naming the structure on failure.
pub(crate) fn write_at(
    sink: &dyn Sink,
    structure: &'static str,
    offset: u64,
    buf: &[u8],
) -> Result<(), DiskError> {
    sink.write_all_at(offset, buf)
        .map_err(|source| DiskError::Writing {
            structure,
            offset,
            source,
        })
}

/// Sets the output length and syncs it: the last step of every writer.
pub(crate) fn finish_sink(sink: &dyn Sink, len: u64) -> Result<(), DiskError> {
    sink.set_len(len).map_err(|source| DiskError::Writing {
        structure: "image length",
        offset: len,
        source,
    })?;
    sink.sync().map_err(|source| DiskError::Writing {
        structure: "image (sync)",
        offset: len,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_flags_and_unknown_keys() {
        let options: BTreeMap<String, String> = [
            ("cluster_size", "64k"),
            ("lazy_refcounts", "on"),
            ("bogus", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut reader = OptionReader::new(Format::Qcow2, &options);
        assert_eq!(reader.size("cluster_size", 0).unwrap(), 65536);
        assert!(reader.flag("lazy_refcounts", false).unwrap());
        assert_eq!(
            reader.choice("compat", &["0.10", "1.1"], "1.1").unwrap(),
            "1.1"
        );
        let err = reader.finish().unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("x"), None);
    }
}
