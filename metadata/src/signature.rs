//! Recognises existing content on a device so `create-md` does not overwrite a
//! file system by accident. Owns: signature offsets. Must never: decide whether
//! to proceed (the caller does, honouring `--force`).

use crate::al::AL_MAGIC;
use crate::superblock::SB_MAGIC;

fn has(buf: &[u8], offset: usize, magic: &[u8]) -> bool {
    buf.get(offset..offset + magic.len()) == Some(magic)
}

/// Names what the first bytes of a device contain (pass at least 128 KiB), or
/// `None` if nothing known is found.
pub fn detect_signature(first_bytes: &[u8]) -> Option<&'static str> {
    let b = first_bytes;
    if has(b, 0, &SB_MAGIC) || has(b, 0, &AL_MAGIC) {
        return Some("drbd metadata");
    }
    if has(b, 0, b"LUKS\xba\xbe") || has(b, 0, b"SKUL\xba\xbe") {
        return Some("LUKS");
    }
    if has(b, 0, b"XFSB") {
        return Some("xfs");
    }
    if has(b, 0x10040, b"_BHRfS_M") {
        return Some("btrfs");
    }
    if has(b, 1080, &[0x53, 0xEF]) {
        return Some(ext_flavour(b));
    }
    if has(b, 4086, b"SWAPSPACE2") || has(b, 4086, b"SWAP-SPACE") {
        return Some("swap");
    }
    if has(b, 512, b"EFI PART") {
        return Some("gpt partition table");
    }
    if has(b, 510, &[0x55, 0xAA]) && mbr_has_partition(b) {
        return Some("mbr partition table");
    }
    None
}

/// ext4 if it uses extents/64bit/flex_bg, ext3 if it has a journal, else ext2.
fn ext_flavour(b: &[u8]) -> &'static str {
    let le32 = |at: usize| {
        b.get(at..at + 4)
            .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let compat = le32(1024 + 0x5C);
    let incompat = le32(1024 + 0x60);
    const EXTENTS: u32 = 0x40;
    const BIT64: u32 = 0x80;
    const FLEX_BG: u32 = 0x200;
    const HAS_JOURNAL: u32 = 0x4;
    if incompat & (EXTENTS | BIT64 | FLEX_BG) != 0 {
        "ext4"
    } else if compat & HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    }
}

fn mbr_has_partition(b: &[u8]) -> bool {
    (0..4).any(|i| {
        let at = 446 + i * 16;
        // Partition type byte non-zero and boot flag 0x00 or 0x80.
        matches!(b.get(at), Some(0x00 | 0x80)) && b.get(at + 4).is_some_and(|t| *t != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf() -> Vec<u8> {
        vec![0u8; 128 << 10]
    }

    #[test]
    fn detects_ext4_superblock() {
        let mut b = buf();
        b[1080] = 0x53;
        b[1081] = 0xEF;
        b[1024 + 0x60] = 0x40 | 0x02; // extents + filetype
        assert_eq!(detect_signature(&b), Some("ext4"));
        b[1024 + 0x60] = 0x02;
        b[1024 + 0x5C] = 0x04;
        assert_eq!(detect_signature(&b), Some("ext3"));
    }

    #[test]
    fn detects_other_signatures() {
        let cases: [(usize, &[u8], &str); 6] = [
            (0, b"XFSB", "xfs"),
            (0x10040, b"_BHRfS_M", "btrfs"),
            (4086, b"SWAPSPACE2", "swap"),
            (0, b"LUKS\xba\xbe", "LUKS"),
            (512, b"EFI PART", "gpt partition table"),
            (0, b"DRBDDMD\0", "drbd metadata"),
        ];
        for (at, magic, name) in cases {
            let mut b = buf();
            b[at..at + magic.len()].copy_from_slice(magic);
            assert_eq!(detect_signature(&b), Some(name));
        }
        let mut b = buf();
        b[510] = 0x55;
        b[511] = 0xAA;
        b[446 + 4] = 0x83;
        assert_eq!(detect_signature(&b), Some("mbr partition table"));
    }

    #[test]
    fn blank_device_has_no_signature() {
        assert_eq!(detect_signature(&buf()), None);
        assert_eq!(detect_signature(&[]), None);
    }
}
