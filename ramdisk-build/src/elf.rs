//! Just enough ELF64 reading for the ramdisk: is a binary static (it must run without a
//! libc in the initramfs), and what does a kernel module's `.modinfo` section say (its
//! `depends=` and `alias=` entries are what `depmod` turns into `modules.dep` and
//! `modules.alias`; Debian's linux-image packages do not ship those files, their postinst
//! runs depmod).
//!
//! Input may be any file; every offset is bounds-checked and failures are errors.

/// Errors from reading an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// Not an ELF file at all.
    #[error("not an ELF file")]
    NotElf,
    /// ELF, but not 64-bit little-endian.
    #[error("unsupported ELF class/encoding (need ELF64 little-endian)")]
    Unsupported,
    /// A header or table points outside the file.
    #[error("truncated or corrupt ELF: {0}")]
    Corrupt(&'static str),
    /// A kernel module without a `.modinfo` section.
    #[error("no .modinfo section (not a kernel module?)")]
    NoModinfo,
}

const PT_INTERP: u32 = 3;

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(ElfError::Corrupt("header field out of range"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or(ElfError::Corrupt("header field out of range"))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or(ElfError::Corrupt("header field out of range"))
}

fn check_ident(b: &[u8]) -> Result<(), ElfError> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if b[4] != 2 || b[5] != 1 {
        return Err(ElfError::Unsupported);
    }
    Ok(())
}

/// The ELF machine number (`e_machine`; 62 is x86-64).
pub fn machine(b: &[u8]) -> Result<u16, ElfError> {
    check_ident(b)?;
    u16_at(b, 0x12)
}

/// True when the executable has no program interpreter (`PT_INTERP`), i.e. it is static
/// (static-pie included) and will run in an initramfs that has no dynamic loader.
pub fn is_static(b: &[u8]) -> Result<bool, ElfError> {
    check_ident(b)?;
    let phoff = u64_at(b, 0x20)? as usize;
    let phentsize = u16_at(b, 0x36)? as usize;
    let phnum = u16_at(b, 0x38)? as usize;
    if phnum > 0 && phentsize < 4 {
        return Err(ElfError::Corrupt("program header entry too small"));
    }
    for i in 0..phnum {
        let off = phoff
            .checked_add(i * phentsize)
            .ok_or(ElfError::Corrupt("program header offset overflow"))?;
        if u32_at(b, off)? == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

fn section_bytes<'a>(b: &'a [u8], wanted: &str) -> Result<Option<&'a [u8]>, ElfError> {
    check_ident(b)?;
    let shoff = u64_at(b, 0x28)? as usize;
    let shentsize = u16_at(b, 0x3A)? as usize;
    let shnum = u16_at(b, 0x3C)? as usize;
    let shstrndx = u16_at(b, 0x3E)? as usize;
    if shnum == 0 {
        return Ok(None);
    }
    if shentsize < 40 || shstrndx >= shnum {
        return Err(ElfError::Corrupt("bad section header table"));
    }
    let sh = |i: usize| -> Result<(u32, u64, u64), ElfError> {
        let base = shoff
            .checked_add(i * shentsize)
            .ok_or(ElfError::Corrupt("section header offset overflow"))?;
        Ok((
            u32_at(b, base)?,
            u64_at(b, base + 24)?,
            u64_at(b, base + 32)?,
        ))
    };
    let slice = |off: u64, size: u64| -> Result<&'a [u8], ElfError> {
        let start = usize::try_from(off).map_err(|_| ElfError::Corrupt("offset"))?;
        let len = usize::try_from(size).map_err(|_| ElfError::Corrupt("size"))?;
        start
            .checked_add(len)
            .and_then(|end| b.get(start..end))
            .ok_or(ElfError::Corrupt("section outside file"))
    };
    let (_, str_off, str_size) = sh(shstrndx)?;
    let strtab = slice(str_off, str_size)?;
    for i in 0..shnum {
        let (name_off, off, size) = sh(i)?;
        let name = strtab
            .get(name_off as usize..)
            .and_then(|s| s.split(|&c| c == 0).next())
            .ok_or(ElfError::Corrupt("section name outside string table"))?;
        if name == wanted.as_bytes() {
            return slice(off, size).map(Some);
        }
    }
    Ok(None)
}

/// The `key=value` pairs of a kernel module's `.modinfo` section, in file order (keys such as
/// `alias` repeat).
pub fn modinfo(b: &[u8]) -> Result<Vec<(String, String)>, ElfError> {
    let sec = section_bytes(b, ".modinfo")?.ok_or(ElfError::NoModinfo)?;
    Ok(sec
        .split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal ELF64 relocatable with a `.modinfo` section holding `info`
    /// (NUL-separated `key=value` strings) — the shape of a `.ko` file as far as depmod cares.
    pub(crate) fn fake_module(info: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for s in info {
            modinfo.extend_from_slice(s.as_bytes());
            modinfo.push(0);
        }
        let shstrtab = b"\0.modinfo\0.shstrtab\0".to_vec();
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[0x10..0x12].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        f[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        let modinfo_off = f.len() as u64;
        f.extend_from_slice(&modinfo);
        let shstr_off = f.len() as u64;
        f.extend_from_slice(&shstrtab);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len() as u64;
        let mut section = |name: u32, ty: u32, off: u64, size: u64| {
            let mut s = vec![0u8; 64];
            s[0..4].copy_from_slice(&name.to_le_bytes());
            s[4..8].copy_from_slice(&ty.to_le_bytes());
            s[24..32].copy_from_slice(&off.to_le_bytes());
            s[32..40].copy_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&s);
        };
        section(0, 0, 0, 0);
        section(1, 1, modinfo_off, modinfo.len() as u64);
        section(10, 3, shstr_off, shstrtab.len() as u64);
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        f[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        f[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        f[0x3E..0x40].copy_from_slice(&2u16.to_le_bytes());
        f
    }

    #[test]
    fn reads_modinfo_pairs_in_order() {
        let m = fake_module(&[
            "alias=pci:v00001AF4d00001000sv*sd*bc*sc*i*",
            "depends=virtio,failover",
            "alias=virtio:d00000001v*",
            "name=virtio_net",
        ]);
        let info = modinfo(&m).unwrap();
        assert_eq!(info.len(), 4);
        assert_eq!(info[1], ("depends".into(), "virtio,failover".into()));
        assert_eq!(info[3], ("name".into(), "virtio_net".into()));
        assert_eq!(machine(&m).unwrap(), 62);
    }

    #[test]
    fn rejects_non_elf_and_corrupt_tables() {
        assert!(matches!(modinfo(b"hello"), Err(ElfError::NotElf)));
        let mut m = fake_module(&["name=x"]);
        // Point the section table past the end of the file.
        m[0x28..0x30].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(modinfo(&m), Err(ElfError::Corrupt(_))));
        let mut m = fake_module(&["name=x"]);
        m[4] = 1; // ELF32
        assert!(matches!(modinfo(&m), Err(ElfError::Unsupported)));
        // Every truncation is an error, never a panic (the last 24 bytes of the final
        // section header hold fields that are never read).
        let m = fake_module(&["name=x", "depends="]);
        for cut in 0..m.len() - 24 {
            assert!(modinfo(&m[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn static_detection_reads_program_headers() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // The test binary is built for the host's gnu target: dynamically linked.
        assert!(!is_static(&exe).unwrap());
        // A file with no program headers has no interpreter.
        assert!(is_static(&fake_module(&["name=x"])).unwrap());
    }
}
