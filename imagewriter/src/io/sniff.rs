//! Recognize image formats from their first bytes.
//!
//! The raw writer copies bytes verbatim, so a qcow2 or a compressed stream written as "raw"
//! yields an unbootable disk at best and, with a crafted qcow2, a format-confusion attack at
//! worst (Ironic bug 2071740: trust the bytes, not the declared `disk_format`). Magic numbers
//! from the formats' specifications (qemu `docs/interop/qcow2.txt`, RFC 1952, the xz and zstd
//! file-format specs, VMDK/VHDX/VDI headers).

use std::fmt;

/// What the first bytes of an image say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Nothing recognized: treated as a raw disk (or partition) image.
    Raw,
    /// QEMU copy-on-write v2/v3 (`QFI\xfb`).
    Qcow2,
    /// QEMU enhanced disk (`QED\0`).
    Qed,
    /// VMware sparse extent (`KDMV`) or descriptor file.
    Vmdk,
    /// Hyper-V VHDX (`vhdxfile`).
    Vhdx,
    /// Virtual PC dynamic VHD (`conectix` header copy at offset 0).
    Vhd,
    /// VirtualBox VDI (signature 0xbeda107f at offset 64).
    Vdi,
    /// gzip stream (RFC 1952).
    Gzip,
    /// xz stream.
    Xz,
    /// zstd frame.
    Zstd,
    /// bzip2 stream.
    Bzip2,
}

impl ImageFormat {
    /// Name as Ironic/qemu-img spell it where one exists.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Qed => "qed",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhdx => "vhdx",
            ImageFormat::Vhd => "vpc",
            ImageFormat::Vdi => "vdi",
            ImageFormat::Gzip => "gzip",
            ImageFormat::Xz => "xz",
            ImageFormat::Zstd => "zstd",
            ImageFormat::Bzip2 => "bzip2",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Classify an image from its first bytes (pass at least 512 when the image has them).
pub fn detect(head: &[u8]) -> ImageFormat {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(b"QFI\xfb") {
        ImageFormat::Qcow2
    } else if starts(b"QED\0") {
        ImageFormat::Qed
    } else if starts(b"KDMV") || starts(b"# Disk DescriptorFile") {
        ImageFormat::Vmdk
    } else if starts(b"vhdxfile") {
        ImageFormat::Vhdx
    } else if starts(b"conectix") {
        ImageFormat::Vhd
    } else if head.get(64..68) == Some(&[0x7f, 0x10, 0xda, 0xbe][..]) {
        ImageFormat::Vdi
    } else if starts(&[0x1f, 0x8b]) {
        ImageFormat::Gzip
    } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        ImageFormat::Xz
    } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ImageFormat::Zstd
    } else if head.len() >= 10
        && starts(b"BZh")
        && (b'1'..=b'9').contains(&head[3])
        && &head[4..10] == b"1AY&SY"
    {
        ImageFormat::Bzip2
    } else {
        ImageFormat::Raw
    }
}

/// True when `head` starts with a protective or hybrid MBR announcing a GPT (a partition entry
/// of type 0xEE and the 0x55AA signature). IPA's format inspector reports such raw disks as
/// `gpt`, which is why Ironic's default `permitted_image_formats` lists `gpt` beside `raw`.
pub fn is_gpt(head: &[u8]) -> bool {
    if head.len() < 512 || head[510..512] != [0x55, 0xaa] {
        return false;
    }
    (0..4).any(|i| head[446 + 16 * i + 4] == 0xee)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_magics() {
        assert_eq!(detect(b"QFI\xfb\0\0\0\x03rest"), ImageFormat::Qcow2);
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), ImageFormat::Gzip);
        assert_eq!(detect(b"\xfd7zXZ\0\0\x04"), ImageFormat::Xz);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd, 0x24]), ImageFormat::Zstd);
        assert_eq!(detect(b"BZh91AY&SY...."), ImageFormat::Bzip2);
        assert_eq!(detect(b"KDMV\x01\0\0\0"), ImageFormat::Vmdk);
        assert_eq!(detect(b"vhdxfile"), ImageFormat::Vhdx);
        let mut vdi = vec![0u8; 128];
        vdi[64..68].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
        assert_eq!(detect(&vdi), ImageFormat::Vdi);
    }

    #[test]
    fn raw_disks_are_raw() {
        // An MBR boot sector (GRUB boot.img starts with a short jump) and an all-zero start.
        let mut mbr = vec![0u8; 512];
        mbr[..3].copy_from_slice(&[0xeb, 0x63, 0x90]);
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(detect(&mbr), ImageFormat::Raw);
        assert_eq!(detect(&[0u8; 4096]), ImageFormat::Raw);
        assert_eq!(detect(b""), ImageFormat::Raw);
        assert_eq!(detect(b"BZh9 not bzip2"), ImageFormat::Raw);
    }

    #[test]
    fn gpt_needs_signature_and_protective_entry() {
        let mut mbr = vec![0u8; 512];
        mbr[446 + 4] = 0xee;
        assert!(!is_gpt(&mbr), "no 0x55AA signature");
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert!(is_gpt(&mbr));
        mbr[446 + 4] = 0x83;
        assert!(!is_gpt(&mbr), "a plain MBR partition");
        assert!(!is_gpt(&mbr[..100]));
    }
}
