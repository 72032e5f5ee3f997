//! Identity strings (model, serial, WWN) derived the way udev derives them.
//!
//! IPA takes `serial`, `wwn`, `wwn_with_extension` and `wwn_vendor_extension`
//! from udev's `ID_SERIAL_SHORT`, `ID_WWN`, ... properties (IPA `hardware.py`
//! `list_all_block_devices`) and the model from lsblk, which prefers udev's
//! `ID_MODEL_ENC`. Operators copy these strings from inspection data into root
//! device hints, so Ferric must produce the same spelling without udev:
//! - ATA disks: udev's `ata_id` reads IDENTIFY DEVICE. The kernel exposes the
//!   same 512 bytes in the SAT "ATA Information" VPD page, `device/vpd_pg89`,
//!   from byte 60 on (SAT-2 §10.4.4). This also yields the full 40-character
//!   model instead of the 16-character SCSI INQUIRY product in `device/model`.
//! - SCSI disks: `scsi_id` turns an NAA designator into `0x<hex>`; sysfs shows
//!   it as `device/wwid` = `naa.<hex>`. 16-byte NAA (type 6) ids are split into
//!   the 8-byte WWN and an 8-byte vendor extension.
//! - NVMe: udev copies the `wwid` attribute verbatim (`eui.…`, `nvme.…`).

/// Offset of IDENTIFY DEVICE data inside the ATA Information VPD page.
const IDENTIFY_OFFSET: usize = 60;
const IDENTIFY_LEN: usize = 512;

/// Identity read from an ATA IDENTIFY DEVICE block.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct AtaIdentity {
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
}

/// Decodes `vpd_pg89`; `None` when the page is absent, short or not page 0x89.
pub(crate) fn parse_vpd_pg89(page: &[u8]) -> Option<AtaIdentity> {
    if page.len() < IDENTIFY_OFFSET + IDENTIFY_LEN || page[1] != 0x89 {
        return None;
    }
    let id = &page[IDENTIFY_OFFSET..IDENTIFY_OFFSET + IDENTIFY_LEN];
    let word = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
    // ATA strings store two characters per word, high byte first (ATA8-ACS 3.3.10).
    let string = |first: usize, words: usize| -> Option<String> {
        let mut raw = Vec::with_capacity(words * 2);
        for w in first..first + words {
            let [lo, hi] = word(w).to_le_bytes();
            raw.push(hi);
            raw.push(lo);
        }
        let s: String = raw
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    ' '
                }
            })
            .collect();
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    };
    // Word 87 bit 8 says words 108-111 hold the world wide name (ATA8-ACS 7.16.7.54).
    let w87 = word(87);
    let wwn_valid = w87 & 0xc000 == 0x4000 && w87 & 0x0100 != 0;
    let wwn = (wwn_valid && (108..112).any(|i| word(i) != 0)).then(|| {
        format!(
            "0x{:04x}{:04x}{:04x}{:04x}",
            word(108),
            word(109),
            word(110),
            word(111)
        )
    });
    Some(AtaIdentity {
        model: string(27, 20),
        serial: string(10, 10).map(|s| udev_serial(&s)),
        wwn,
    })
}

/// The unit serial number from a SCSI `vpd_pg80` page (4-byte header, then ASCII).
pub(crate) fn parse_vpd_pg80(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = u16::from_be_bytes([page[2], page[3]]) as usize;
    let body = &page[4..page.len().min(4 + len)];
    let s: String = body
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { ' ' })
        .collect();
    let s = udev_serial(&s);
    (!s.is_empty()).then_some(s)
}

/// WWN fields as udev spells them: `(wwn, wwn_with_extension, wwn_vendor_extension)`.
pub(crate) fn wwn_from_wwid(
    wwid: &str,
    nvme: bool,
) -> (Option<String>, Option<String>, Option<String>) {
    let wwid = wwid.trim();
    if wwid.is_empty() {
        return (None, None, None);
    }
    if nvme {
        // 60-persistent-storage.rules: ENV{ID_WWN}="$attr{wwid}".
        return (Some(wwid.to_string()), None, None);
    }
    let Some(hex) = wwid.strip_prefix("naa.") else {
        // scsi_id sets ID_WWN only from NAA designators (t10./eui. are not WWNs to udev).
        return (None, None, None);
    };
    let hex = hex.to_ascii_lowercase();
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (None, None, None);
    }
    if hex.len() == 32 {
        let (base, ext) = hex.split_at(16);
        (
            Some(format!("0x{base}")),
            Some(format!("0x{hex}")),
            Some(format!("0x{ext}")),
        )
    } else {
        (Some(format!("0x{hex}")), Some(format!("0x{hex}")), None)
    }
}

/// Normalises a serial like udev's `ID_SERIAL_SHORT`: trim, runs of
/// whitespace become one `_`, characters outside udev's safe set become `_`
/// (systemd `udev_replace_whitespace` + `udev_replace_chars`).
pub(crate) fn udev_serial(raw: &str) -> String {
    let words: Vec<&str> = raw.split_whitespace().collect();
    words
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a vpd_pg89 page holding the given IDENTIFY strings.
    pub(crate) fn fake_pg89(model: &str, serial: &str, wwn: Option<[u16; 4]>) -> Vec<u8> {
        let mut page = vec![0u8; IDENTIFY_OFFSET + IDENTIFY_LEN];
        page[1] = 0x89;
        page[2] = 0x02;
        page[3] = 0x38;
        let put = |page: &mut Vec<u8>, first: usize, words: usize, s: &str| {
            let mut bytes = s.as_bytes().to_vec();
            bytes.resize(words * 2, b' ');
            for (i, pair) in bytes.chunks(2).enumerate() {
                let off = IDENTIFY_OFFSET + 2 * (first + i);
                page[off] = pair[1];
                page[off + 1] = pair[0];
            }
        };
        put(&mut page, 27, 20, model);
        put(&mut page, 10, 10, serial);
        if let Some(w) = wwn {
            let w87: u16 = 0x4100;
            page[IDENTIFY_OFFSET + 174..IDENTIFY_OFFSET + 176].copy_from_slice(&w87.to_le_bytes());
            for (i, v) in w.iter().enumerate() {
                let off = IDENTIFY_OFFSET + 2 * (108 + i);
                page[off..off + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        page
    }

    #[test]
    fn pg89_decodes_model_serial_and_wwn() {
        let page = fake_pg89(
            "Samsung SSD 860 EVO 500GB",
            "  S3Z1NB0K123456A",
            Some([0x5002, 0x538e, 0x4012, 0x3456]),
        );
        let id = parse_vpd_pg89(&page).unwrap();
        assert_eq!(id.model.as_deref(), Some("Samsung SSD 860 EVO 500GB"));
        assert_eq!(id.serial.as_deref(), Some("S3Z1NB0K123456A"));
        assert_eq!(id.wwn.as_deref(), Some("0x5002538e40123456"));
    }

    #[test]
    fn pg89_without_wwn_flag_has_no_wwn() {
        let page = fake_pg89("QEMU HARDDISK", "QM00001", None);
        let id = parse_vpd_pg89(&page).unwrap();
        assert_eq!(id.wwn, None);
        assert_eq!(id.model.as_deref(), Some("QEMU HARDDISK"));
    }

    #[test]
    fn pg89_rejects_short_or_wrong_page() {
        assert_eq!(parse_vpd_pg89(&[0, 0x89, 0, 4]), None);
        let mut page = fake_pg89("X", "Y", None);
        page[1] = 0x80;
        assert_eq!(parse_vpd_pg89(&page), None);
    }

    #[test]
    fn pg80_serial() {
        let mut page = vec![0u8, 0x80, 0, 12];
        page.extend_from_slice(b"  WD-WCC 123");
        assert_eq!(parse_vpd_pg80(&page).as_deref(), Some("WD-WCC_123"));
        assert_eq!(parse_vpd_pg80(&[0, 0x80, 0, 0]), None);
        // A length field beyond the buffer is clamped, not trusted.
        assert_eq!(
            parse_vpd_pg80(&[0, 0x80, 0xff, 0xff, b'A']).as_deref(),
            Some("A")
        );
    }

    #[test]
    fn wwid_spellings() {
        assert_eq!(
            wwn_from_wwid("naa.5000C500A1B2C3D4", false),
            (
                Some("0x5000c500a1b2c3d4".into()),
                Some("0x5000c500a1b2c3d4".into()),
                None
            )
        );
        assert_eq!(
            wwn_from_wwid("naa.600508b1001c2ba2f1a0b2c3d4e5f607", false),
            (
                Some("0x600508b1001c2ba2".into()),
                Some("0x600508b1001c2ba2f1a0b2c3d4e5f607".into()),
                Some("0xf1a0b2c3d4e5f607".into())
            )
        );
        assert_eq!(
            wwn_from_wwid("t10.ATA     QEMU HARDDISK", false),
            (None, None, None)
        );
        assert_eq!(
            wwn_from_wwid("eui.0025388b71b2c3d4\n", true),
            (Some("eui.0025388b71b2c3d4".into()), None, None)
        );
    }

    #[test]
    fn serial_normalisation() {
        assert_eq!(udev_serial("  AB  CD\tE "), "AB_CD_E");
        assert_eq!(udev_serial("a/b"), "a_b");
    }
}
