//! ATA Security Erase through SG_IO ATA PASS-THROUGH(16) (IPA `_ata_erase`,
//! which drives `hdparm --security-set-pass NULL` / `--security-erase[-enhanced]
//! NULL` after checking `hdparm -I` and `smartctl -d ata -g security`).
//!
//! Facts:
//! - ATA PASS-THROUGH(16) (SAT-3 §12.2.2): opcode 85h; byte 1 = PROTOCOL << 1
//!   (3 non-data, 4 PIO data-in, 5 PIO data-out); byte 2 = T_DIR (bit 3),
//!   BYTE_BLOCK (bit 2), T_LENGTH (bits 1:0, 2 = length in SECTOR COUNT);
//!   bytes 5-12 hold FEATURES, COUNT and LBA (high byte first for each);
//!   byte 13 DEVICE; byte 14 COMMAND.
//! - ACS-3: IDENTIFY DEVICE ECh; SECURITY SET PASSWORD F1h, UNLOCK F2h, ERASE
//!   PREPARE F3h, ERASE UNIT F4h, DISABLE PASSWORD F6h. The password commands
//!   transfer one 512-byte block: word 0 bit 0 = master (1) / user (0), ERASE
//!   UNIT word 0 bit 1 = enhanced; words 1-16 = the 32-byte password.
//! - IDENTIFY word 82 bit 1 and word 128 (security status): bit 0 supported,
//!   1 enabled, 2 locked, 3 frozen, 4 count expired, 5 enhanced erase
//!   supported. Words 89/90: normal/enhanced erase time in units of 2
//!   minutes (bit 15 set: 15-bit value; else 8-bit, 255 = more than 508 min).
//!
//! IPA's state handling is kept (a frozen drive is an error, a locked drive
//! is unlocked with the empty password first, the empty user password is set,
//! enhanced erase is used when supported, security must be disabled again
//! afterwards). The "empty" password is 32 zero bytes, which is what
//! `hdparm ... NULL` sends. After a failed erase the drive is unlocked and
//! its password disabled again so that it is not left locked.

use std::fs::File;

use crate::block::BlockDevice;
use crate::clean::nvme::Hw;
use crate::clean::{dev_path, Operation, Progress};
use crate::manager::StepContext;
use crate::sys::{self, SgData, SgResult};

pub(crate) const CMD_IDENTIFY: u8 = 0xEC;
pub(crate) const CMD_SET_PASSWORD: u8 = 0xF1;
pub(crate) const CMD_UNLOCK: u8 = 0xF2;
pub(crate) const CMD_ERASE_PREPARE: u8 = 0xF3;
pub(crate) const CMD_ERASE_UNIT: u8 = 0xF4;
pub(crate) const CMD_DISABLE_PASSWORD: u8 = 0xF6;

const PROTO_NON_DATA: u8 = 3;
const PROTO_PIO_IN: u8 = 4;
const PROTO_PIO_OUT: u8 = 5;

/// An ATA PASS-THROUGH(16) CDB for a 28-bit command moving `count` blocks.
pub(crate) fn pt16(protocol: u8, command: u8, count: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x85;
    c[1] = protocol << 1;
    c[2] = match protocol {
        PROTO_PIO_IN => 0x0e,  // T_DIR from device, blocks, length in COUNT
        PROTO_PIO_OUT => 0x06, // T_DIR to device, blocks, length in COUNT
        _ => 0x00,
    };
    c[6] = count;
    c[13] = 0x40; // DEVICE: LBA mode, as hdparm/sg_sat send it
    c[14] = command;
    c
}

/// The 512-byte block of SET PASSWORD / UNLOCK / DISABLE / ERASE UNIT.
pub(crate) fn password_block(enhanced: bool) -> [u8; 512] {
    let mut b = [0u8; 512];
    // Word 0: bit 0 = 0 (user password), bit 1 = enhanced erase (ERASE UNIT
    // only; reserved and zero for the other commands). Words 1-16: the empty
    // password, all zero. For SET PASSWORD, bit 8 = 0 selects security level
    // High, as hdparm's default.
    b[0] = if enhanced { 0b10 } else { 0 };
    b
}

/// The security state from IDENTIFY DEVICE data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Security {
    pub supported: bool,
    pub enabled: bool,
    pub locked: bool,
    pub frozen: bool,
    pub count_expired: bool,
    pub enhanced_supported: bool,
    /// Estimated minutes for a normal erase (None = not reported).
    pub erase_minutes: Option<u32>,
    /// Estimated minutes for an enhanced erase.
    pub enhanced_erase_minutes: Option<u32>,
}

fn word(id: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([id[2 * i], id[2 * i + 1]])
}

fn erase_time(w: u16) -> Option<u32> {
    let v = if w & 0x8000 != 0 {
        w & 0x7fff
    } else {
        w & 0xff
    };
    (v != 0).then_some(v as u32 * 2)
}

impl Security {
    /// Parses IDENTIFY DEVICE data; `Err` when it is not a valid ATA identify
    /// (wrong length, an ATAPI device, a bad integrity word).
    pub(crate) fn parse(id: &[u8]) -> Result<Security, String> {
        if id.len() != 512 {
            return Err(format!("IDENTIFY DEVICE returned {} bytes", id.len()));
        }
        if word(id, 0) & 0x8000 != 0 {
            return Err("not an ATA device (IDENTIFY word 0 bit 15 set)".into());
        }
        // Word 255: signature A5h in bits 7:0 means bits 15:8 hold a checksum
        // making the sum of all 512 bytes zero (ACS-3 §7.12.7.91).
        if id[510] == 0xA5 && id.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != 0 {
            return Err("IDENTIFY DEVICE data has a bad checksum".into());
        }
        if id.iter().all(|&b| b == 0) {
            return Err("IDENTIFY DEVICE returned no data".into());
        }
        let w82 = word(id, 82);
        let w128 = word(id, 128);
        let valid82 = w82 != 0 && w82 != 0xffff;
        Ok(Security {
            supported: (valid82 && w82 & 0b10 != 0) || w128 & 1 != 0,
            enabled: w128 & 0b10 != 0,
            locked: w128 & 0b100 != 0,
            frozen: w128 & 0b1000 != 0,
            count_expired: w128 & 0b1_0000 != 0,
            enhanced_supported: w128 & 0b10_0000 != 0,
            erase_minutes: erase_time(word(id, 89)),
            enhanced_erase_minutes: erase_time(word(id, 90)),
        })
    }

    /// The erase IPA would run and its estimated minutes.
    pub(crate) fn planned_erase(&self) -> (bool, Option<u32>) {
        if self.enhanced_supported {
            (true, self.enhanced_erase_minutes)
        } else {
            (false, self.erase_minutes)
        }
    }
}

/// Interprets an SG_IO completion of an ATA PASS-THROUGH command.
pub(crate) fn check(r: &SgResult) -> Result<(), String> {
    if r.host_status != 0 {
        return Err(format!("host status 0x{:x}", r.host_status));
    }
    // driver_status bits 2:0 carry driver errors (timeouts, ...); bit 3 only
    // says that sense data is present.
    if r.driver_status & 0x07 != 0 {
        return Err(format!("driver status 0x{:x}", r.driver_status));
    }
    match r.status {
        0 => Ok(()),
        2 => {
            let s = parse_sense(&r.sense);
            // "RECOVERED ERROR, ATA PASS-THROUGH INFORMATION AVAILABLE" with
            // the ERR bit clear is a success that returned registers.
            if s.key == 0x1
                && s.asc == 0x00
                && s.ascq == 0x1d
                && s.ata_status.is_none_or(|st| st & 1 == 0)
            {
                return Ok(());
            }
            Err(s.to_string())
        }
        other => Err(format!("SCSI status 0x{other:02x}")),
    }
}

/// The parts of sense data that say what went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub ata_error: Option<u8>,
    pub ata_status: Option<u8>,
}

impl std::fmt::Display for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "check condition: sense key 0x{:x}, ASC/ASCQ 0x{:02x}/0x{:02x}",
            self.key, self.asc, self.ascq
        )?;
        if let (Some(e), Some(s)) = (self.ata_error, self.ata_status) {
            write!(f, ", ATA error 0x{e:02x} status 0x{s:02x}")?;
            if s & 1 != 0 && e & 0x04 != 0 {
                f.write_str(" (command aborted by the drive)")?;
            }
        }
        Ok(())
    }
}

/// Parses fixed (70h/71h) or descriptor (72h/73h) sense data, with the ATA
/// Status Return descriptor (09h) or the fixed-format INFORMATION bytes
/// that SAT fills with the ATA ERROR and STATUS registers.
pub(crate) fn parse_sense(s: &[u8]) -> Sense {
    let mut out = Sense::default();
    let Some(&code) = s.first() else { return out };
    match code & 0x7f {
        0x70 | 0x71 if s.len() >= 14 => {
            out.key = s[2] & 0x0f;
            out.asc = s[12];
            out.ascq = s[13];
            out.ata_error = Some(s[3]);
            out.ata_status = Some(s[4]);
        }
        0x72 | 0x73 if s.len() >= 8 => {
            out.key = s[1] & 0x0f;
            out.asc = s[2];
            out.ascq = s[3];
            let end = (8 + s[7] as usize).min(s.len());
            let mut i = 8;
            while i + 2 <= end {
                let (ty, len) = (s[i], s[i + 1] as usize);
                if ty == 0x09 && i + 14 <= end {
                    out.ata_error = Some(s[i + 3]);
                    out.ata_status = Some(s[i + 13]);
                }
                i += 2 + len;
            }
        }
        _ => {}
    }
    out
}

/// Sends ATA commands; the real one uses SG_IO, tests use a simulated drive.
pub(crate) trait AtaTransport {
    /// PIO data-in of one block.
    fn pio_in(&mut self, cdb: [u8; 16], buf: &mut [u8; 512], timeout_ms: u32)
        -> Result<(), String>;
    /// PIO data-out of one block.
    fn pio_out(&mut self, cdb: [u8; 16], data: &[u8; 512], timeout_ms: u32) -> Result<(), String>;
    /// A non-data command.
    fn non_data(&mut self, cdb: [u8; 16], timeout_ms: u32) -> Result<(), String>;
}

struct SgTransport<'a>(&'a File);

impl AtaTransport for SgTransport<'_> {
    fn pio_in(
        &mut self,
        cdb: [u8; 16],
        buf: &mut [u8; 512],
        timeout_ms: u32,
    ) -> Result<(), String> {
        let r = sys::sg_io(self.0, &cdb, SgData::FromDevice(buf), timeout_ms)
            .map_err(|e| format!("SG_IO: {e}"))?;
        check(&r)
    }
    fn pio_out(&mut self, cdb: [u8; 16], data: &[u8; 512], timeout_ms: u32) -> Result<(), String> {
        let r = sys::sg_io(self.0, &cdb, SgData::ToDevice(data), timeout_ms)
            .map_err(|e| format!("SG_IO: {e}"))?;
        check(&r)
    }
    fn non_data(&mut self, cdb: [u8; 16], timeout_ms: u32) -> Result<(), String> {
        let r = sys::sg_io(self.0, &cdb, SgData::None, timeout_ms)
            .map_err(|e| format!("SG_IO: {e}"))?;
        check(&r)
    }
}

const SHORT_TIMEOUT_MS: u32 = 30_000;

fn identify(t: &mut dyn AtaTransport) -> Result<Security, String> {
    let mut id = [0u8; 512];
    t.pio_in(pt16(PROTO_PIO_IN, CMD_IDENTIFY, 1), &mut id, 10_000)?;
    Security::parse(&id)
}

/// Timeout for SECURITY ERASE UNIT: the drive's estimate plus 30 minutes, or
/// 24 hours when the drive gives none or says "more than 508 minutes".
pub(crate) fn erase_timeout_ms(minutes: Option<u32>) -> u32 {
    let m = match minutes {
        Some(m) if m < 510 => m + 30,
        _ => 24 * 60,
    };
    m.saturating_mul(60_000)
}

fn unlock_and_disable(t: &mut dyn AtaTransport) {
    let pw = password_block(false);
    let _ = t.pio_out(pt16(PROTO_PIO_OUT, CMD_UNLOCK, 1), &pw, SHORT_TIMEOUT_MS);
    let _ = t.pio_out(
        pt16(PROTO_PIO_OUT, CMD_DISABLE_PASSWORD, 1),
        &pw,
        SHORT_TIMEOUT_MS,
    );
}

/// IPA's ATA security erase. `max_minutes` (express erase) declines drives
/// whose own estimate is longer. `Err` is a failed erase (IPA
/// `BlockDeviceEraseError`); drives without security support are
/// [`Hw::NotApplicable`].
pub(crate) fn erase_with(
    t: &mut dyn AtaTransport,
    device: &str,
    max_minutes: Option<u32>,
) -> Result<Hw, String> {
    let sec = match identify(t) {
        Ok(s) => s,
        // Not an ATA device behind SAT, or pass-through refused (IPA's
        // smartctl check): not applicable, not a failure.
        Err(e) => return Ok(Hw::NotApplicable(format!("ATA IDENTIFY failed: {e}"))),
    };
    if !sec.supported {
        return Ok(Hw::NotApplicable(
            "the drive does not support the ATA security feature set".into(),
        ));
    }
    if sec.frozen {
        return Err(format!(
            "Block device {device} is frozen and cannot be erased"
        ));
    }
    if sec.count_expired {
        return Err(format!(
            "Block device {device} has exhausted its password attempts; power-cycle it and retry"
        ));
    }
    let sec = if sec.locked {
        let pw = password_block(false);
        let _ = t.pio_out(pt16(PROTO_PIO_OUT, CMD_UNLOCK, 1), &pw, SHORT_TIMEOUT_MS);
        let again = identify(t)?;
        if again.locked {
            return Err(format!(
                "Block device {device} already has a security password set"
            ));
        }
        again
    } else {
        sec
    };
    let (enhanced, minutes) = sec.planned_erase();
    if let Some(max) = max_minutes {
        match minutes {
            Some(m) if m <= max => {}
            _ => {
                return Ok(Hw::NotApplicable(format!(
                    "the drive estimates {} for a security erase, more than {max} minutes",
                    minutes.map_or("no time".to_string(), |m| format!("{m} minutes"))
                )))
            }
        }
    }
    if !sec.enabled {
        t.pio_out(
            pt16(PROTO_PIO_OUT, CMD_SET_PASSWORD, 1),
            &password_block(false),
            SHORT_TIMEOUT_MS,
        )
        .map_err(|e| format!("Security password set failed for device {device}: {e}"))?;
    }
    let erase = t
        .non_data(pt16(PROTO_NON_DATA, CMD_ERASE_PREPARE, 0), SHORT_TIMEOUT_MS)
        .and_then(|()| {
            t.pio_out(
                pt16(PROTO_PIO_OUT, CMD_ERASE_UNIT, 1),
                &password_block(enhanced),
                erase_timeout_ms(minutes),
            )
        });
    if let Err(e) = erase {
        // Leave the drive usable for the overwrite fallback.
        unlock_and_disable(t);
        return Err(format!("Erase failed for device {device}: {e}"));
    }
    let after = identify(t)?;
    if after.enabled {
        unlock_and_disable(t);
        return Err(format!(
            "An unknown error occurred erasing block device {device}"
        ));
    }
    Ok(Hw::Erased(format!(
        "ATA {}security erase",
        if enhanced { "enhanced " } else { "" }
    )))
}

/// Whether to try ATA commands on `dev` at all: SCSI-attached (SAT) disks,
/// not behind USB bridges, which pass security commands unreliably (IPA
/// refuses those through its `smartctl -d ata` check).
pub(crate) fn applicable(dev: &BlockDevice) -> bool {
    dev.hctl.is_some() && dev.tran.as_deref() != Some("usb")
}

/// Runs [`erase_with`] on the real device.
pub(crate) fn secure_erase(
    ctx: &StepContext<'_>,
    dev: &BlockDevice,
    max_minutes: Option<u32>,
) -> Result<Hw, String> {
    let path = dev_path(ctx.root, dev);
    let f = crate::clean::metadata::open_exclusive(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let report = |done: u64| {
        (ctx.progress)(&Progress {
            device: &dev.name,
            operation: Operation::AtaSecureErase,
            pass: 1,
            passes: 1,
            bytes_done: done,
            bytes_total: dev.size,
        })
    };
    report(0);
    let r = erase_with(&mut SgTransport(&f), &dev.name, max_minutes)?;
    if matches!(r, Hw::Erased(_)) {
        report(dev.size);
        let _ = sys::flush_buffers(&f);
        if let Err(e) = sys::reread_partitions(&f) {
            log::debug!("BLKRRPART after ATA erase of {}: {e}", dev.name);
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdbs_match_sat_and_hdparm() {
        // hdparm -I / sg_sat_identify: 85 08 0e 00 00 00 01 00 00 00 00 00 00 40 ec 00
        assert_eq!(
            pt16(PROTO_PIO_IN, CMD_IDENTIFY, 1),
            [0x85, 0x08, 0x0e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0xec, 0]
        );
        assert_eq!(
            pt16(PROTO_PIO_OUT, CMD_SET_PASSWORD, 1),
            [0x85, 0x0a, 0x06, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0xf1, 0]
        );
        assert_eq!(
            pt16(PROTO_NON_DATA, CMD_ERASE_PREPARE, 0),
            [0x85, 0x06, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0xf3, 0]
        );
        assert_eq!(pt16(PROTO_PIO_OUT, CMD_ERASE_UNIT, 1)[14], 0xf4);
    }

    #[test]
    fn password_blocks() {
        let normal = password_block(false);
        assert!(normal.iter().all(|&b| b == 0));
        let enhanced = password_block(true);
        assert_eq!(enhanced[0], 0b10);
        assert!(enhanced[1..].iter().all(|&b| b == 0));
    }

    pub(crate) fn identify_data(
        w82: u16,
        w128: u16,
        w89: u16,
        w90: u16,
        checksum: bool,
    ) -> [u8; 512] {
        let mut id = [0u8; 512];
        let mut put = |i: usize, v: u16| id[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
        put(0, 0x0040);
        put(82, w82);
        put(128, w128);
        put(89, w89);
        put(90, w90);
        if checksum {
            id[510] = 0xA5;
            let sum = id[..511].iter().fold(0u8, |a, b| a.wrapping_add(*b));
            id[511] = 0u8.wrapping_sub(sum);
        }
        id
    }

    #[test]
    fn security_word_decoding() {
        let s = Security::parse(&identify_data(0x0002, 0b10_1001, 0x8005, 60, true)).unwrap();
        assert!(s.supported && s.frozen && s.enhanced_supported);
        assert!(!s.enabled && !s.locked && !s.count_expired);
        assert_eq!(s.erase_minutes, Some(10));
        assert_eq!(s.enhanced_erase_minutes, Some(120));
        assert_eq!(s.planned_erase(), (true, Some(120)));
        let mut bad = identify_data(2, 1, 0, 0, true);
        bad[20] ^= 1;
        assert!(Security::parse(&bad).unwrap_err().contains("checksum"));
        let mut atapi = identify_data(2, 1, 0, 0, false);
        atapi[1] = 0x85;
        assert!(Security::parse(&atapi).is_err());
        assert!(Security::parse(&[0u8; 512]).is_err());
    }

    #[test]
    fn sense_decoding() {
        // Descriptor sense, ABORTED COMMAND, ATA status return descriptor:
        // ERROR 04h (ABRT), STATUS 51h (DRDY|DSC|ERR).
        let mut d = vec![0x72, 0x0b, 0x00, 0x00, 0, 0, 0, 14, 0x09, 0x0c, 0, 0x04];
        d.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x51]);
        let s = parse_sense(&d);
        assert_eq!(
            (s.key, s.ata_error, s.ata_status),
            (0x0b, Some(0x04), Some(0x51))
        );
        let r = SgResult {
            status: 2,
            host_status: 0,
            driver_status: 0x08,
            sense: d,
        };
        assert!(check(&r).unwrap_err().contains("aborted by the drive"));
        // Recovered error with registers and ERR clear: success.
        let mut ok = vec![0x72, 0x01, 0x00, 0x1d, 0, 0, 0, 14, 0x09, 0x0c, 0, 0x00];
        ok.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x50]);
        let r = SgResult {
            status: 2,
            host_status: 0,
            driver_status: 0x08,
            sense: ok,
        };
        assert_eq!(check(&r), Ok(()));
        // Fixed format, ILLEGAL REQUEST / INVALID FIELD IN CDB (a SAS disk).
        let mut fixed = vec![0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x05;
        fixed[12] = 0x24;
        let s = parse_sense(&fixed);
        assert_eq!((s.key, s.asc), (5, 0x24));
        // Timeouts and transport errors.
        let r = SgResult {
            status: 0,
            host_status: 0,
            driver_status: 0x06,
            sense: vec![],
        };
        assert!(check(&r).is_err());
        let r = SgResult {
            status: 0,
            host_status: 0x03,
            driver_status: 0,
            sense: vec![],
        };
        assert!(check(&r).is_err());
        // Truncated or garbage sense never panics.
        for junk in [
            &[][..],
            &[0x72][..],
            &[0x72, 1, 2, 3, 4, 5, 6, 255, 9, 200][..],
        ] {
            let _ = parse_sense(junk);
        }
    }

    #[test]
    fn erase_timeouts() {
        assert_eq!(erase_timeout_ms(Some(2)), 32 * 60_000);
        assert_eq!(erase_timeout_ms(Some(510)), 24 * 60 * 60_000);
        assert_eq!(erase_timeout_ms(None), 24 * 60 * 60_000);
    }

    /// A drive following the ACS security state machine (SEC1..SEC6).
    struct FakeDrive {
        w82: u16,
        supported: bool,
        enabled: bool,
        locked: bool,
        frozen: bool,
        enhanced: bool,
        prepared: bool,
        fail_erase: bool,
        password: Option<[u8; 32]>,
        log: Vec<(u8, [u8; 16])>,
        erased_enhanced: Option<bool>,
    }

    impl FakeDrive {
        fn new() -> FakeDrive {
            FakeDrive {
                w82: 0x0002,
                supported: true,
                enabled: false,
                locked: false,
                frozen: false,
                enhanced: false,
                prepared: false,
                fail_erase: false,
                password: None,
                log: Vec::new(),
                erased_enhanced: None,
            }
        }
        fn commands(&self) -> Vec<u8> {
            self.log.iter().map(|(c, _)| *c).collect()
        }
    }

    impl AtaTransport for FakeDrive {
        fn pio_in(&mut self, cdb: [u8; 16], buf: &mut [u8; 512], _t: u32) -> Result<(), String> {
            self.log.push((cdb[14], cdb));
            assert_eq!(cdb[14], CMD_IDENTIFY);
            let w128 = self.supported as u16
                | (self.enabled as u16) << 1
                | (self.locked as u16) << 2
                | (self.frozen as u16) << 3
                | (self.enhanced as u16) << 5;
            *buf = identify_data(if self.supported { self.w82 } else { 0 }, w128, 1, 1, true);
            Ok(())
        }
        fn pio_out(&mut self, cdb: [u8; 16], data: &[u8; 512], _t: u32) -> Result<(), String> {
            self.log.push((cdb[14], cdb));
            let pw: [u8; 32] = data[2..34].try_into().unwrap();
            let prepared = std::mem::replace(&mut self.prepared, false);
            match cdb[14] {
                CMD_SET_PASSWORD if !self.frozen && !self.locked => {
                    self.password = Some(pw);
                    self.enabled = true;
                    Ok(())
                }
                CMD_UNLOCK if self.password == Some(pw) => {
                    self.locked = false;
                    Ok(())
                }
                CMD_DISABLE_PASSWORD if self.password == Some(pw) && !self.locked => {
                    self.enabled = false;
                    self.password = None;
                    Ok(())
                }
                CMD_ERASE_UNIT if prepared && self.enabled && self.password == Some(pw) => {
                    if self.fail_erase {
                        self.locked = true;
                        return Err("ABRT".into());
                    }
                    self.erased_enhanced = Some(data[0] & 0b10 != 0);
                    self.enabled = false;
                    self.password = None;
                    Ok(())
                }
                c => Err(format!("aborted command 0x{c:02x}")),
            }
        }
        fn non_data(&mut self, cdb: [u8; 16], _t: u32) -> Result<(), String> {
            self.log.push((cdb[14], cdb));
            assert_eq!(cdb[14], CMD_ERASE_PREPARE);
            self.prepared = true;
            Ok(())
        }
    }

    #[test]
    fn sec1_drive_is_erased_like_hdparm_does() {
        let mut d = FakeDrive::new();
        let r = erase_with(&mut d, "/dev/sda", None).unwrap();
        assert_eq!(r, Hw::Erased("ATA security erase".into()));
        assert_eq!(
            d.commands(),
            vec![
                CMD_IDENTIFY,
                CMD_SET_PASSWORD,
                CMD_ERASE_PREPARE,
                CMD_ERASE_UNIT,
                CMD_IDENTIFY
            ]
        );
        assert_eq!(d.erased_enhanced, Some(false));
        assert!(!d.enabled);
    }

    #[test]
    fn enhanced_erase_when_supported() {
        let mut d = FakeDrive::new();
        d.enhanced = true;
        let r = erase_with(&mut d, "/dev/sda", None).unwrap();
        assert_eq!(r, Hw::Erased("ATA enhanced security erase".into()));
        assert_eq!(d.erased_enhanced, Some(true));
    }

    #[test]
    fn frozen_is_an_error_and_nothing_is_sent() {
        let mut d = FakeDrive::new();
        d.frozen = true;
        let e = erase_with(&mut d, "/dev/sda", None).unwrap_err();
        assert!(e.contains("frozen"), "{e}");
        assert_eq!(d.commands(), vec![CMD_IDENTIFY]);
    }

    #[test]
    fn unsupported_is_not_applicable() {
        let mut d = FakeDrive::new();
        d.supported = false;
        assert!(matches!(
            erase_with(&mut d, "/dev/sda", None),
            Ok(Hw::NotApplicable(_))
        ));
        assert_eq!(d.commands(), vec![CMD_IDENTIFY]);
    }

    #[test]
    fn locked_by_a_previous_attempt_is_unlocked_first() {
        let mut d = FakeDrive::new();
        d.enabled = true;
        d.locked = true;
        d.password = Some([0; 32]);
        assert!(matches!(
            erase_with(&mut d, "/dev/sda", None),
            Ok(Hw::Erased(_))
        ));
        assert_eq!(d.commands()[..3], [CMD_IDENTIFY, CMD_UNLOCK, CMD_IDENTIFY]);
        // Already enabled: no new SET PASSWORD.
        assert!(!d.commands().contains(&CMD_SET_PASSWORD));
    }

    #[test]
    fn foreign_password_is_an_error() {
        let mut d = FakeDrive::new();
        d.enabled = true;
        d.locked = true;
        d.password = Some([b'x'; 32]);
        let e = erase_with(&mut d, "/dev/sda", None).unwrap_err();
        assert!(e.contains("already has a security password"), "{e}");
    }

    #[test]
    fn failed_erase_leaves_the_drive_unlocked_and_disabled() {
        let mut d = FakeDrive::new();
        d.fail_erase = true;
        let e = erase_with(&mut d, "/dev/sda", None).unwrap_err();
        assert!(e.starts_with("Erase failed for device /dev/sda"), "{e}");
        assert!(!d.locked && !d.enabled && d.password.is_none());
        assert_eq!(
            d.commands()[d.log.len() - 2..],
            [CMD_UNLOCK, CMD_DISABLE_PASSWORD]
        );
    }

    #[test]
    fn express_declines_slow_drives() {
        let mut d = FakeDrive::new();
        // The fake reports 2 minutes for both erases.
        assert!(matches!(
            erase_with(&mut d, "/dev/sda", Some(2)),
            Ok(Hw::Erased(_))
        ));
        let mut slow = FakeDrive::new();
        let r = erase_with(&mut slow, "/dev/sda", Some(1)).unwrap();
        assert!(
            matches!(r, Hw::NotApplicable(ref m) if m.contains("2 minutes")),
            "{r:?}"
        );
        assert_eq!(slow.commands(), vec![CMD_IDENTIFY]);
    }
}
