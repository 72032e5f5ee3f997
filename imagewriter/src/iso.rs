//! The little of ISO 9660 (ECMA-119) the config drive needs: the primary volume descriptor's
//! volume identifier (the label `config-2` that cloud-init looks for, which blkid reports as
//! `LABEL`) and the volume size.

/// Byte offset of the volume descriptor set: 16 sectors of 2048 bytes of system area.
pub const DESCRIPTORS_OFFSET: usize = 0x8000;
/// Size of one volume descriptor.
const DESCRIPTOR_LEN: usize = 2048;
/// Descriptors examined before giving up (the primary one is normally the first).
const MAX_DESCRIPTORS: usize = 16;

/// Bytes to read from the start of a filesystem so that [`volume_id`] can find the primary
/// volume descriptor in the usual position (the first descriptor).
pub const PROBE_LEN: usize = DESCRIPTORS_OFFSET + DESCRIPTOR_LEN;

/// The primary volume descriptor in `data` (the start of an ISO image), if any.
fn primary_descriptor(data: &[u8]) -> Option<&[u8]> {
    for i in 0..MAX_DESCRIPTORS {
        let off = DESCRIPTORS_OFFSET + i * DESCRIPTOR_LEN;
        let d = data.get(off..off + DESCRIPTOR_LEN)?;
        if &d[1..6] != b"CD001" {
            return None;
        }
        match d[0] {
            1 => return Some(d),
            255 => return None, // Set terminator.
            _ => {}
        }
    }
    None
}

/// The volume identifier of the ISO 9660 image starting at `data[0]`, without its space
/// padding (bytes 40..72 of the primary volume descriptor, at 0x8028 of the image).
pub fn volume_id(data: &[u8]) -> Option<String> {
    let d = primary_descriptor(data)?;
    let id = String::from_utf8_lossy(&d[40..72]);
    Some(id.trim_end_matches([' ', '\0']).to_owned())
}

/// The size the image says it has: volume space size × logical block size (both-endian
/// fields at 80 and 128 of the primary volume descriptor; the little-endian half is used).
pub fn volume_size(data: &[u8]) -> Option<u64> {
    let d = primary_descriptor(data)?;
    let blocks = u32::from_le_bytes(d[80..84].try_into().ok()?);
    let block = u16::from_le_bytes(d[128..130].try_into().ok()?);
    Some(u64::from(blocks) * u64::from(block))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(label: &str, blocks: u32) -> Vec<u8> {
        let mut v = vec![0u8; PROBE_LEN + DESCRIPTOR_LEN];
        let d = &mut v[DESCRIPTORS_OFFSET..];
        d[0] = 1;
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        d[40..72].fill(b' ');
        d[40..40 + label.len()].copy_from_slice(label.as_bytes());
        d[80..84].copy_from_slice(&blocks.to_le_bytes());
        d[128..130].copy_from_slice(&2048u16.to_le_bytes());
        let t = &mut v[PROBE_LEN..];
        t[0] = 255;
        t[1..6].copy_from_slice(b"CD001");
        v
    }

    #[test]
    fn reads_label_and_size() {
        let v = iso("config-2", 193);
        assert_eq!(volume_id(&v).as_deref(), Some("config-2"));
        assert_eq!(volume_size(&v), Some(193 * 2048));
    }

    #[test]
    fn not_an_iso() {
        assert_eq!(volume_id(&[0u8; PROBE_LEN]), None);
        assert_eq!(volume_id(&[0u8; 100]), None);
        let mut v = iso("x", 1);
        v[DESCRIPTORS_OFFSET] = 255; // Terminator first: no primary descriptor.
        assert_eq!(volume_id(&v), None);
    }
}
