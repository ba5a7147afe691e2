//! A minimal, read-only ZIP reader for PyTorch's `torch.save` archives: the
//! central directory (ZIP64 included) and uncompressed ("stored") entries,
//! which is all `torch.save` writes. Every offset and size is checked
//! against the file, and each entry's CRC-32 is verified when it is read,
//! so a truncated or corrupted archive is an error, never a panic.
//!
//! Format: PKWARE's APPNOTE.TXT (end of central directory record, ZIP64
//! locator and record, central file headers, local file headers).

use std::collections::BTreeMap;

/// One stored file of the archive: where its data lies.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    /// Absolute byte range of the (uncompressed) data in the archive.
    pub start: usize,
    pub len: usize,
    pub crc32: u32,
}

/// The entries of an archive, by name.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    pub entries: BTreeMap<String, Entry>,
}

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

/// Whether `data` starts like a ZIP archive (a local file header).
pub fn is_zip(data: &[u8]) -> bool {
    data.starts_with(b"PK\x03\x04")
}

/// Little-endian reads that fail instead of panicking past the end.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn at(data: &'a [u8], pos: usize) -> Self {
        Reader { data, pos }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("a record at byte {} runs past the end of the file (truncated?)", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.bytes(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
}

fn to_usize(v: u64, what: &str) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{what} {v} is too large"))
}

/// Finds the end-of-central-directory record: the last signature within
/// the final 64 KiB + 22 bytes whose comment length reaches the end exactly.
fn find_eocd(data: &[u8]) -> Result<usize, String> {
    if data.len() < 22 {
        return Err(format!("{} bytes is too short for a ZIP archive (truncated?)", data.len()));
    }
    let lowest = data.len().saturating_sub(22 + 0xFFFF);
    (lowest..=data.len() - 22)
        .rev()
        .find(|&i| {
            data[i..i + 4] == EOCD_SIG.to_le_bytes()
                && i + 22 + u16::from_le_bytes([data[i + 20], data[i + 21]]) as usize == data.len()
        })
        .ok_or_else(|| "no ZIP end-of-central-directory record (truncated or not a ZIP archive?)".to_string())
}

/// Reads the central directory of `data` and checks every entry's local
/// header and data range. Entries that are compressed or encrypted are refused.
pub fn read_archive(data: &[u8]) -> Result<Archive, String> {
    let (count, cd_start, cd_end) = central_directory(data)?;
    let cd = &data[..cd_end];
    let mut r = Reader::at(cd, cd_start);
    let mut archive = Archive::default();
    for _ in 0..count {
        let entry = central_entry(&mut r, data)?;
        let name = entry.name.clone();
        if archive.entries.insert(name.clone(), entry).is_some() {
            return Err(format!("entry {name:?} appears twice"));
        }
    }
    Ok(archive)
}

/// The central directory: its entry count and byte range, from the end
/// record (or the ZIP64 record it points at), checked against the file.
fn central_directory(data: &[u8]) -> Result<(u64, usize, usize), String> {
    let eocd = find_eocd(data)?;
    let mut r = Reader::at(data, eocd + 4);
    let (disk, cd_disk) = (r.u16()?, r.u16()?);
    let _entries_here = r.u16()?;
    let mut count = r.u16()? as u64;
    let mut cd_size = r.u32()? as u64;
    let mut cd_offset = r.u32()? as u64;
    if disk != 0 || cd_disk != 0 {
        return Err("multi-part (spanned) ZIP archives are not supported".into());
    }
    // ZIP64: the real values live in the ZIP64 record the locator points at.
    if eocd >= 20 && data[eocd - 20..eocd - 16] == ZIP64_LOCATOR_SIG.to_le_bytes() {
        let mut l = Reader::at(data, eocd - 16);
        let _disk = l.u32()?;
        let rec = to_usize(l.u64()?, "ZIP64 record offset")?;
        let mut z = Reader::at(data, rec);
        if z.u32()? != ZIP64_EOCD_SIG {
            return Err(format!("the ZIP64 locator points at byte {rec}, which holds no ZIP64 record"));
        }
        let _size = z.u64()?;
        let _versions = z.u32()?;
        let _disks = z.u64()?;
        let _entries_here = z.u64()?;
        count = z.u64()?;
        cd_size = z.u64()?;
        cd_offset = z.u64()?;
    }
    let cd_start = to_usize(cd_offset, "central directory offset")?;
    let cd_end = cd_start
        .checked_add(to_usize(cd_size, "central directory size")?)
        .filter(|&e| e <= data.len())
        .ok_or_else(|| {
            format!("the central directory ({cd_size} bytes at {cd_offset}) lies past the end of the file (truncated?)")
        })?;
    // Each central header is at least 46 bytes: a larger count is a lie.
    if count > (cd_end - cd_start) as u64 / 46 {
        return Err(format!("the central directory claims {count} entries but has room for fewer"));
    }
    Ok((count, cd_start, cd_end))
}

/// Reads the central header at `r` and checks that its entry is stored, unencrypted,
/// and lies, after its local header, inside `data`.
fn central_entry(r: &mut Reader, data: &[u8]) -> Result<Entry, String> {
    if r.u32()? != CENTRAL_SIG {
        return Err(format!("bad central directory header at byte {}", r.pos - 4));
    }
    let _made = r.u16()?;
    let _need = r.u16()?;
    let flags = r.u16()?;
    let method = r.u16()?;
    let _time = r.u32()?;
    let crc32 = r.u32()?;
    let mut sizes = [r.u32()? as u64, r.u32()? as u64, 0]; // compressed, size, local offset
    let name_len = r.u16()? as usize;
    let extra_len = r.u16()? as usize;
    let comment_len = r.u16()? as usize;
    let _disk = r.u16()?;
    let _attrs = r.bytes(6)?;
    sizes[2] = r.u32()? as u64;
    let name = String::from_utf8_lossy(r.bytes(name_len)?).into_owned();
    let extra = r.bytes(extra_len)?;
    let _comment = r.bytes(comment_len)?;
    let [comp, size, local] = zip64_sizes(extra, sizes, &name)?;
    if flags & 1 != 0 {
        return Err(format!("entry {name:?} is encrypted"));
    }
    if method != 0 {
        return Err(format!(
            "entry {name:?} is compressed (method {method}); torch.save stores entries uncompressed, so this \
             archive was repacked: re-save it with torch.save"
        ));
    }
    if comp != size {
        return Err(format!("entry {name:?} is stored but its sizes differ ({comp} vs {size})"));
    }
    // The data follows the local header, whose name and extra lengths may differ from the central ones.
    let local = to_usize(local, "local header offset")?;
    let mut l = Reader::at(data, local);
    if l.u32().ok() != Some(LOCAL_SIG) {
        return Err(format!("entry {name:?}: no local header at byte {local} (truncated or corrupt archive?)"));
    }
    let mut l = Reader::at(data, local + 26);
    let (ln, le) = (l.u16()? as usize, l.u16()? as usize);
    let start = local + 30 + ln + le;
    let len = to_usize(size, "entry size")?;
    if start.checked_add(len).is_none_or(|e| e > data.len()) {
        return Err(format!(
            "entry {name:?}: its {size} bytes at byte {start} run past the end of the file (truncated?)"
        ));
    }
    Ok(Entry { name, start, len, crc32 })
}

/// ZIP64 extended information: 64-bit values for the fields saturated at 0xFFFFFFFF, in the
/// order size, compressed size, local offset. `sizes` and the result are (compressed, size, local).
fn zip64_sizes(extra: &[u8], sizes: [u64; 3], name: &str) -> Result<[u64; 3], String> {
    let [mut comp, mut size, mut local] = sizes;
    let mut extra = Reader::at(extra, 0);
    while extra.data.len() - extra.pos >= 4 {
        let (id, len) = (extra.u16()?, extra.u16()? as usize);
        let body = extra.bytes(len).map_err(|_| format!("entry {name:?}: bad extra field"))?;
        if id == 1 {
            let mut z = Reader::at(body, 0);
            let short = |_| format!("entry {name:?}: short ZIP64 field");
            if size == 0xFFFF_FFFF {
                size = z.u64().map_err(short)?;
            }
            if comp == 0xFFFF_FFFF {
                comp = z.u64().map_err(short)?;
            }
            if local == 0xFFFF_FFFF {
                local = z.u64().map_err(short)?;
            }
        }
    }
    Ok([comp, size, local])
}

impl Archive {
    /// An entry's bytes, after checking its CRC-32.
    pub fn read<'d>(&self, data: &'d [u8], name: &str) -> Result<&'d [u8], String> {
        let e = self.entries.get(name).ok_or_else(|| format!("the archive has no entry {name:?}"))?;
        let bytes = data.get(e.start..e.start + e.len).ok_or_else(|| format!("entry {name:?} is out of range"))?;
        let crc = crc32fast::hash(bytes);
        if crc != e.crc32 {
            return Err(format!("entry {name:?} is corrupt (CRC-32 {crc:08x}, expected {:08x})", e.crc32));
        }
        Ok(bytes)
    }
}

/// Writes an archive of stored entries (tests and tools), each entry's data
/// aligned to 64 bytes as `torch.save` does (with a padding extra field).
pub fn write_stored(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32fast::hash(data);
        let base = out.len() + 30 + name.len() + 4;
        let pad = (64 - base % 64) % 64;
        let header = |sig: u32| {
            let mut h = sig.to_le_bytes().to_vec();
            if sig == CENTRAL_SIG {
                h.extend_from_slice(&20u16.to_le_bytes());
            }
            h.extend_from_slice(&20u16.to_le_bytes()); // version needed
            h.extend_from_slice(&0u16.to_le_bytes()); // flags
            h.extend_from_slice(&0u16.to_le_bytes()); // stored
            h.extend_from_slice(&0u32.to_le_bytes()); // time, date
            h.extend_from_slice(&crc.to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h
        };
        out.extend(header(LOCAL_SIG));
        out.extend_from_slice(&((4 + pad) as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        // "FB" padding field, as PyTorch's writer uses.
        out.extend_from_slice(&0x4246u16.to_le_bytes());
        out.extend_from_slice(&(pad as u16).to_le_bytes());
        out.extend(std::iter::repeat_n(b'Z', pad));
        out.extend_from_slice(data);
        central.extend(header(CENTRAL_SIG));
        central.extend_from_slice(&0u16.to_le_bytes()); // extra
        central.extend_from_slice(&0u16.to_le_bytes()); // comment
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&[0; 6]); // attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&EOCD_SIG.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_archives_read_back_with_aligned_data() {
        let bytes = write_stored(&[("m/data.pkl", b"\x80\x02}q\x00."), ("m/data/0", &[1, 2, 3, 4, 5, 6, 7, 8])]);
        let a = read_archive(&bytes).unwrap();
        assert_eq!(a.entries.len(), 2);
        assert_eq!(a.read(&bytes, "m/data/0").unwrap(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(a.entries["m/data/0"].start % 64, 0);
        assert!(a.read(&bytes, "m/nope").unwrap_err().contains("no entry"));
    }

    #[test]
    fn truncation_and_corruption_are_errors_never_panics() {
        let bytes = write_stored(&[("a/data.pkl", b"hello"), ("a/data/0", &[9; 100])]);
        for cut in 0..bytes.len() {
            let e = read_archive(&bytes[..cut]);
            assert!(e.is_err(), "cut at {cut} was accepted");
        }
        let mut bad = bytes.clone();
        let start = read_archive(&bytes).unwrap().entries["a/data/0"].start;
        bad[start + 3] ^= 0xFF;
        let a = read_archive(&bad).unwrap();
        assert!(a.read(&bad, "a/data/0").unwrap_err().contains("corrupt"));
        // Random byte flips anywhere: errors or reads, never a panic.
        let mut s = 0x9E37_79B9u64;
        for _ in 0..3000 {
            let mut b = bytes.clone();
            for _ in 0..2 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let i = (s as usize) % b.len();
                b[i] = (s >> 40) as u8;
            }
            if let Ok(a) = read_archive(&b) {
                for n in a.entries.keys() {
                    let _ = a.read(&b, n);
                }
            }
        }
    }
}
