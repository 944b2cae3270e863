//! Content-based format detection and header inspection of untrusted images (the upload
//! inspector), with Glance's acceptance rules made stricter.
//!
//! [`probe`] runs every format's detector over the image, refuses polyglots, and reports the
//! format, the virtual size, every reference to another file and every failed safety check.
//! It never opens a file and reads only the first [`PREFIX_WINDOW`] and last [`SUFFIX_WINDOW`]
//! bytes, so an [`InspectionWindow`] captured while streaming an upload gives the same answer
//! as the whole file. [`Probe::check_declared`] then decides whether an upload is acceptable.

mod error;
mod gpt;
mod iso;
mod luks;
mod qcow;
mod qcow2;
mod qed;
pub(crate) mod source;
mod vdi;
mod vhd;
mod vhdx;
mod vmdk;
mod window;
mod zvhd;

use std::fmt;

pub use error::ProbeError;
pub use window::{InspectionWindow, InspectionWindowBuilder, PREFIX_WINDOW, SUFFIX_WINDOW};

use crate::{Format, ReadAt};
use source::Source;

/// What a probe found out about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub format: Format,
    /// Disk size in bytes from the format's header; `None` for raw-like content (raw, gpt, luks),
    /// where the caller uses the byte size.
    pub virtual_size: Option<u64>,
    /// Other files a reader of this image would open. Never opened here.
    pub references: Vec<FileReference>,
    /// Failed safety checks, each `"<check>: <reason>"`.
    pub safety_failures: Vec<String>,
    /// Variant within the format, e.g. the VMDK createType or "fixed"/"dynamic" for VHD.
    pub subformat: Option<String>,
    /// The data is encrypted (qcow/qcow2 AES or LUKS, a LUKS container).
    pub encrypted: bool,
}

/// A reference from an image to another file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReference {
    pub kind: ReferenceKind,
    /// The name exactly as stored (UTF-16 decoded where the format stores UTF-16).
    pub target: String,
}

/// How an image refers to another file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReferenceKind {
    /// qcow2 / qcow / QED backing file.
    BackingFile,
    /// qcow2 external data file.
    DataFile,
    /// A VMDK descriptor's extent file.
    VmdkExtent,
    /// VMDK `parentFileNameHint`.
    VmdkParent,
    /// Differencing VHD parent name or locator.
    VhdParent,
    /// Differencing VHDX parent locator entry.
    VhdxParent,
    /// Differencing VDI parent (a UUID: VirtualBox looks it up in its media registry).
    VdiParent,
}

impl FileReference {
    pub(crate) fn new(kind: ReferenceKind, target: impl Into<String>) -> FileReference {
        FileReference {
            kind,
            target: target.into(),
        }
    }

    /// `"<check>: <what>"`, the form used in rejection messages.
    fn describe(&self, format: Format) -> String {
        let target = &self.target;
        match self.kind {
            ReferenceKind::BackingFile => {
                format!("backing_file: {format} image references backing file '{target}'")
            }
            ReferenceKind::DataFile => {
                format!("data_file: {format} image references external data file '{target}'")
            }
            ReferenceKind::VmdkExtent => {
                format!("extent: vmdk descriptor references extent file '{target}'")
            }
            ReferenceKind::VmdkParent => {
                format!("parent: vmdk image references parent '{target}'")
            }
            ReferenceKind::VhdParent => {
                format!("parent: differencing vhd references parent '{target}'")
            }
            ReferenceKind::VhdxParent => {
                format!("parent: differencing vhdx references parent '{target}'")
            }
            ReferenceKind::VdiParent => {
                format!("parent: differencing vdi references parent image {target}")
            }
        }
    }
}

/// Why an upload is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub message: String,
}

/// The broad reason for a [`Rejection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// The content is not the declared `disk_format`.
    FormatMismatch,
    /// The content references other files or failed a safety check.
    SafetyCheckFailed,
    /// The declared or detected format is not accepted at all (QED, unknown names).
    UnsupportedFormat,
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectionKind::FormatMismatch => "format mismatch",
            RejectionKind::SafetyCheckFailed => "safety check failed",
            RejectionKind::UnsupportedFormat => "unsupported format",
        })
    }
}

/// Glance calls MBR/GPT checks on kernel and ramdisk images non-fatal: they carry fake MBRs.
const MBR_CHECK: &str = "mbr:";

impl Probe {
    pub(crate) fn new(format: Format) -> Probe {
        Probe {
            format,
            virtual_size: None,
            references: Vec::new(),
            safety_failures: Vec::new(),
            subformat: None,
            encrypted: false,
        }
    }

    pub(crate) fn fail(&mut self, check: &str, reason: impl fmt::Display) {
        self.safety_failures.push(format!("{check}: {reason}"));
    }

    /// Glance's upload rules, stricter: the detected format must be the declared one (`raw`
    /// accepts raw, iso and gpt content — never a qcow2/vmdk/vhd/… header, the CVE-2026-24708
    /// class; `ami`/`ari`/`aki` accept raw and gpt), QED is banned, any reference to another
    /// file is refused and any failed safety check is fatal.
    pub fn check_declared(&self, disk_format: &str) -> Result<(), Rejection> {
        if disk_format == Format::Qed.as_str() || self.format == Format::Qed {
            return Err(Rejection {
                kind: RejectionKind::UnsupportedFormat,
                message: "Image format qed is not accepted (QED is banned like in Glance)".into(),
            });
        }
        let accepted: Vec<Format> = match disk_format {
            "raw" => vec![Format::Raw, Format::Iso, Format::Gpt],
            "ami" | "ari" | "aki" => vec![Format::Raw, Format::Gpt],
            other => match Format::parse(other) {
                // "vpc" is qemu's name, not a disk_format; "gpt" content is declared "raw".
                Some(format) if other != "vpc" && format != Format::Gpt => vec![format],
                _ => {
                    return Err(Rejection {
                        kind: RejectionKind::UnsupportedFormat,
                        message: format!("Image disk_format {other} cannot be inspected"),
                    });
                }
            },
        };
        if !accepted.contains(&self.format) {
            return Err(Rejection {
                kind: RejectionKind::FormatMismatch,
                message: format!(
                    "Image disk_format {disk_format} does not match stream data {}",
                    self.format
                ),
            });
        }
        self.check_safe(disk_format)
    }

    /// The safety half of [`Probe::check_declared`], for content that is not a bare disk (an
    /// OVA, a compressed or docker container): whatever format it turns out to be, it must not
    /// reference another file, fail a safety check, or be QED.
    pub fn check_safe(&self, disk_format: &str) -> Result<(), Rejection> {
        if self.format == Format::Qed {
            return Err(Rejection {
                kind: RejectionKind::UnsupportedFormat,
                message: "Image format qed is not accepted (QED is banned like in Glance)".into(),
            });
        }
        let mbr_is_fatal = !matches!(disk_format, "aki" | "ari");
        let failures: Vec<String> = self
            .references
            .iter()
            .map(|r| r.describe(self.format))
            .chain(
                self.safety_failures
                    .iter()
                    .filter(|f| mbr_is_fatal || !f.starts_with(MBR_CHECK))
                    .cloned(),
            )
            .collect();
        if failures.is_empty() {
            return Ok(());
        }
        Err(Rejection {
            kind: RejectionKind::SafetyCheckFailed,
            message: format!("Image failed safety checks: {}", failures.join("; ")),
        })
    }
}

/// A detector's verdict: `Ok(None)` when the format's signature is absent; `Err` when the
/// signature is present but the structures behind it are malformed.
type Detection = Result<Option<Probe>, ProbeError>;

/// A format's detector.
type Detector = fn(&Source) -> Detection;

/// Detects the format of `src` by content alone and inspects its headers.
///
/// Every detector runs; when more than one format matches the image is refused as ambiguous
/// (like Glance's `InspectWrapper`), except ISO 9660 + GPT (hybrid ISOs) → iso, and GPT or
/// ISO 9660 inside a fixed VHD (guest content in front of a footer) → vhd. Content matching no
/// detector is raw. A detector whose signature matched but whose structures are malformed
/// counts as a match and its error is returned.
pub fn probe(src: &dyn ReadAt) -> Result<Probe, ProbeError> {
    let src = Source::new(src);
    let detectors: [(Format, Detector); 12] = [
        (Format::Qcow2, qcow2::detect),
        (Format::Qcow, qcow::detect),
        (Format::Qed, qed::detect),
        (Format::Vmdk, vmdk::detect),
        (Format::Vhd, vhd::detect),
        (Format::Vhdx, vhdx::detect),
        (Format::Vdi, vdi::detect),
        (Format::Iso, iso::detect),
        (Format::Zvhd, zvhd::detect_zvhd),
        (Format::Zvhd2, zvhd::detect_zvhd2),
        (Format::Luks, luks::detect),
        (Format::Gpt, gpt::detect),
    ];
    let mut matches: Vec<(Format, Result<Probe, ProbeError>)> = Vec::new();
    for (format, detect) in detectors {
        match detect(&src) {
            Ok(None) => {}
            Ok(Some(found)) => matches.push((format, Ok(found))),
            Err(e) => matches.push((format, Err(e))),
        }
    }
    let is_fixed_vhd = |m: &(Format, Result<Probe, ProbeError>)| {
        m.0 == Format::Vhd
            && m.1
                .as_ref()
                .is_ok_and(|p| p.subformat.as_deref() == Some(vhd::FIXED))
    };
    let has = |ms: &[(Format, Result<Probe, ProbeError>)], f: Format| ms.iter().any(|m| m.0 == f);
    if matches.iter().any(is_fixed_vhd) {
        matches.retain(|m| !matches!(m.0, Format::Gpt | Format::Iso));
    }
    if has(&matches, Format::Iso) && has(&matches, Format::Gpt) && matches.len() == 2 {
        matches.retain(|m| m.0 == Format::Iso);
    }
    match matches.len() {
        0 => raw(&src),
        1 => matches.pop().map_or_else(|| raw(&src), |(_, found)| found),
        _ => Err(ProbeError::Ambiguous {
            formats: matches.into_iter().map(|(f, _)| f).collect(),
        }),
    }
}

/// Content no detector claimed. An MBR boot signature is reported as subformat "mbr".
fn raw(src: &Source) -> Result<Probe, ProbeError> {
    let mut found = Probe::new(Format::Raw);
    if gpt::has_mbr_signature(src)? {
        found.subformat = Some("mbr".into());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_of(format: Format) -> Probe {
        Probe::new(format)
    }

    #[test]
    fn raw_declared_refuses_a_qcow2_header() {
        let err = probe_of(Format::Qcow2).check_declared("raw").unwrap_err();
        assert_eq!(err.kind, RejectionKind::FormatMismatch);
        assert_eq!(
            err.message,
            "Image disk_format raw does not match stream data qcow2"
        );
    }

    #[test]
    fn declared_formats_accept_their_content() {
        for (declared, detected) in [
            ("raw", Format::Raw),
            ("raw", Format::Iso),
            ("raw", Format::Gpt),
            ("ami", Format::Raw),
            ("aki", Format::Gpt),
            ("iso", Format::Iso),
            ("qcow2", Format::Qcow2),
            ("vhd", Format::Vhd),
            ("vhdx", Format::Vhdx),
            ("vmdk", Format::Vmdk),
            ("vdi", Format::Vdi),
            ("zvhd2", Format::Zvhd2),
        ] {
            assert_eq!(
                probe_of(detected).check_declared(declared),
                Ok(()),
                "{declared}"
            );
        }
    }

    #[test]
    fn mismatches_and_unknown_names_are_refused() {
        assert!(probe_of(Format::Raw).check_declared("qcow2").is_err());
        assert!(probe_of(Format::Raw).check_declared("iso").is_err());
        assert!(probe_of(Format::Vhd).check_declared("raw").is_err());
        assert!(probe_of(Format::Luks).check_declared("raw").is_err());
        let err = probe_of(Format::Raw).check_declared("ploop").unwrap_err();
        assert_eq!(err.kind, RejectionKind::UnsupportedFormat);
        let err = probe_of(Format::Vhd).check_declared("vpc").unwrap_err();
        assert_eq!(err.kind, RejectionKind::UnsupportedFormat);
    }

    #[test]
    fn qed_is_banned_either_way() {
        for (declared, detected) in [
            ("qed", Format::Qed),
            ("raw", Format::Qed),
            ("qed", Format::Raw),
        ] {
            let err = probe_of(detected).check_declared(declared).unwrap_err();
            assert_eq!(err.kind, RejectionKind::UnsupportedFormat);
        }
    }

    #[test]
    fn references_and_failures_are_named() {
        let mut found = probe_of(Format::Qcow2);
        found.references.push(FileReference::new(
            ReferenceKind::BackingFile,
            "/etc/passwd",
        ));
        let err = found.check_declared("qcow2").unwrap_err();
        assert_eq!(err.kind, RejectionKind::SafetyCheckFailed);
        assert_eq!(
            err.message,
            "Image failed safety checks: backing_file: qcow2 image references backing file '/etc/passwd'"
        );

        let mut found = probe_of(Format::Gpt);
        found.fail("mbr", "partition 2 has boot flag 0x7f");
        assert!(found.check_declared("raw").is_err());
        assert_eq!(found.check_declared("aki"), Ok(()));
    }

    #[test]
    fn empty_input_is_raw() {
        let found = probe(&Vec::new()).unwrap();
        assert_eq!(found.format, Format::Raw);
        assert_eq!(found.virtual_size, None);
        assert_eq!(found.check_declared("raw"), Ok(()));
    }
}
