//! Which image formats are written, and which are refused.
//!
//! The format is taken from the bytes, never from the name or the declared `disk_format`
//! (Ironic bug 2071740, CVE-2024-44082). What IPA does (`disk_utils.get_and_validate_image_format`
//! and `format_inspector.py`): it detects the format, refuses one that is not in lookup's
//! `permitted_image_formats` (default `raw, gpt, qcow2, iso`) or that differs from the declared
//! `disk_format`, and refuses qcow2 images with a backing file or an external data file. A raw
//! disk whose MBR is a GPT protective MBR is reported as `gpt`, hence `gpt` in that list.
//! IPA skips the inspection when `disk_format` is `raw` (it writes the bytes verbatim with `dd`);
//! Ferric inspects always, so a qcow2 declared `raw` is refused rather than written verbatim.
//!
//! Compressed containers: neither IPA nor Ironic decompress images (a gzip declared `raw` is
//! written verbatim by IPA, one declared `qcow2` fails its inspection). Ferric accepts one level
//! of gzip or zstd as a transport encoding, detected from the bytes, and applies every rule
//! above to what is inside: `disk_format` and `permitted_image_formats` name the inner format
//! (`raw`/`gpt` or `qcow2`). The digest is still the one of the downloaded (compressed) file, as
//! Glance computes it. Nested containers and any other format (xz — see
//! [`crate::io::decompress`] —, vmdk, vhd, vhdx, vdi, qed, bzip2, iso declared as such) are
//! refused.

use crate::error::ImageError;
use crate::io::sniff::{self, ImageFormat};

/// What the bytes of an image turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    /// The compression wrapped around the image, if any (gzip or zstd).
    pub container: Option<ImageFormat>,
    /// The format of the (decompressed) image.
    pub inner: ImageFormat,
    /// For a raw image: its first sector is a GPT protective MBR.
    pub gpt: bool,
}

impl Detected {
    /// Classify `head`, the first bytes of the (decompressed) image.
    pub fn from_head(container: Option<ImageFormat>, head: &[u8]) -> Detected {
        let inner = sniff::detect(head);
        Detected {
            container,
            inner,
            gpt: inner == ImageFormat::Raw && sniff::is_gpt(head),
        }
    }

    /// The name IPA's inspector gives the inner format (`raw`, `gpt`, `qcow2`, …).
    pub fn inner_name(&self) -> &'static str {
        if self.gpt {
            "gpt"
        } else {
            self.inner.name()
        }
    }

    /// `qcow2`, `gzip+raw`, `zstd+qcow2`, … (for logs and the write report).
    pub fn describe(&self) -> String {
        match self.container {
            Some(c) => format!("{c}+{}", self.inner_name()),
            None => self.inner_name().to_string(),
        }
    }
}

/// True for the compressions Ferric unwraps.
pub fn is_container(f: ImageFormat) -> bool {
    matches!(f, ImageFormat::Gzip | ImageFormat::Zstd)
}

/// Apply the rules of the module documentation. `declared` is `image_info.disk_format`,
/// `permitted` lookup's `permitted_image_formats` (`None`: no list was given).
pub fn check(
    detected: &Detected,
    declared: Option<&str>,
    permitted: Option<&[String]>,
) -> Result<(), ImageError> {
    let inner = detected.inner;
    if is_container(inner) {
        return Err(ImageError::InvalidImage(format!(
            "the image is {} inside {}: nested compression is not supported",
            inner,
            detected.container.map_or("nothing", ImageFormat::name)
        )));
    }
    if !matches!(inner, ImageFormat::Raw | ImageFormat::Qcow2) {
        return Err(ImageError::UnsupportedFormat(format!(
            "the image bytes are {inner}; Ferric writes raw and qcow2 images (optionally gzip or \
             zstd compressed)"
        )));
    }
    if let Some(declared) = declared {
        let declared = declared.trim().to_ascii_lowercase();
        let matches = match declared.as_str() {
            "raw" => inner == ImageFormat::Raw,
            "qcow2" => inner == ImageFormat::Qcow2,
            other => {
                return Err(ImageError::UnsupportedFormat(format!(
                    "disk_format {other:?}: Ferric writes raw and qcow2 images only"
                )))
            }
        };
        if !matches {
            return Err(ImageError::InvalidImage(format!(
                "Security: expected format was {declared}, but the image is actually {} \
                 (Ironic bug 2071740)",
                detected.describe()
            )));
        }
    }
    if let Some(list) = permitted {
        let has = |name: &str| list.iter().any(|p| p.trim().eq_ignore_ascii_case(name));
        let name = detected.inner_name();
        // A GPT disk is a raw disk: an operator who permits raw images permits GPT ones.
        if !(has(name) || (detected.gpt && has("raw"))) {
            return Err(ImageError::InvalidImage(format!(
                "Security: detected image format was {name}, but only {} are allowed \
                 (permitted_image_formats)",
                list.join(", ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(container: Option<ImageFormat>, inner: ImageFormat, gpt: bool) -> Detected {
        Detected {
            container,
            inner,
            gpt,
        }
    }

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn declared_format_must_match_the_bytes() {
        let raw = d(None, ImageFormat::Raw, false);
        let qcow = d(None, ImageFormat::Qcow2, false);
        check(&raw, Some("raw"), None).unwrap();
        check(&qcow, Some("qcow2"), None).unwrap();
        check(&qcow, None, None).unwrap();
        let e = check(&qcow, Some("raw"), None).unwrap_err();
        assert!(
            matches!(e, ImageError::InvalidImage(ref m) if m.contains("actually qcow2")),
            "{e}"
        );
        assert!(matches!(
            check(&raw, Some("qcow2"), None),
            Err(ImageError::InvalidImage(_))
        ));
        assert!(matches!(
            check(&raw, Some("vmdk"), None),
            Err(ImageError::UnsupportedFormat(_))
        ));
        // A gzip around a qcow2 declared raw is still a qcow2.
        let gz_qcow = d(Some(ImageFormat::Gzip), ImageFormat::Qcow2, false);
        let e = check(&gz_qcow, Some("raw"), None).unwrap_err();
        assert!(e.to_string().contains("gzip+qcow2"), "{e}");
    }

    #[test]
    fn permitted_list_names_the_inner_format() {
        let permitted = list(&["raw", "gpt", "qcow2", "iso"]);
        check(&d(None, ImageFormat::Raw, true), None, Some(&permitted)).unwrap();
        check(
            &d(Some(ImageFormat::Zstd), ImageFormat::Qcow2, false),
            None,
            Some(&permitted),
        )
        .unwrap();
        let raw_only = list(&["raw"]);
        let e = check(&d(None, ImageFormat::Qcow2, false), None, Some(&raw_only)).unwrap_err();
        assert!(
            e.to_string().contains("detected image format was qcow2"),
            "{e}"
        );
        check(&d(None, ImageFormat::Raw, true), None, Some(&raw_only)).unwrap();
        let gpt_only = list(&["gpt"]);
        assert!(check(&d(None, ImageFormat::Raw, false), None, Some(&gpt_only)).is_err());
    }

    #[test]
    fn other_formats_and_nesting_are_refused() {
        for f in [ImageFormat::Vmdk, ImageFormat::Vhdx, ImageFormat::Bzip2] {
            assert!(matches!(
                check(&d(None, f, false), None, None),
                Err(ImageError::UnsupportedFormat(_))
            ));
        }
        assert!(matches!(
            check(
                &d(Some(ImageFormat::Gzip), ImageFormat::Gzip, false),
                None,
                None
            ),
            Err(ImageError::InvalidImage(_))
        ));
    }
}
