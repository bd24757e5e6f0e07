//! The host input blob: how the host shim learns its mode and reads its files without
//! semihosting (Trust rule 11). `tools/mkblob.py` writes it; QEMU's generic loader puts it at
//! [`crate::layout::HOST_INPUT_BASE`] before any CPU starts; the host shim parses it here.
//!
//! Layout (every integer little-endian, every record padded to 4 bytes):
//!
//! ```text
//! 0x00  magic      8 bytes  "HSHMBLOB"
//! 0x08  version    u32      1
//! 0x0c  total_len  u32      bytes of the whole blob, header included (<= HOST_INPUT_MAX)
//! 0x10  nargs      u32      arguments: the mode first, then its operands (file names, ...)
//! 0x14  nfiles     u32      files, each a name and its contents
//! 0x18  checksum   u32      FNV-1a (32-bit) of bytes [0x20, total_len)
//! 0x1c  reserved   u32      0
//! 0x20  nargs  x { len u32, bytes[len], pad }
//!       nfiles x { name_len u32, data_len u32, name[name_len], pad, data[data_len], pad }
//! ```
//!
//! Arguments and names are UTF-8. The parser checks every length against the blob before it
//! touches a byte, so a corrupt or hostile blob is an error, never a panic.

use crate::layout::HOST_INPUT_MAX;

/// The first 8 bytes of a blob.
pub const MAGIC: [u8; 8] = *b"HSHMBLOB";
/// The format version this parser reads.
pub const VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 0x20;

/// Why a blob was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobError {
    /// No magic: there is no blob (the host shim then runs its demo).
    NoBlob,
    /// Another format version.
    Version(u32),
    /// `total_len` is below the header or above [`HOST_INPUT_MAX`] or the bytes given.
    Length,
    /// A record runs past `total_len`, or bytes are left over after the last one.
    Truncated,
    /// The checksum does not match.
    Checksum,
    /// An argument or file name is not UTF-8.
    NotUtf8,
}

impl core::fmt::Display for BlobError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlobError::NoBlob => write!(f, "no host input blob"),
            BlobError::Version(v) => write!(f, "host input blob version {v} (expected {VERSION})"),
            BlobError::Length => write!(f, "host input blob length out of range"),
            BlobError::Truncated => write!(f, "host input blob truncated or malformed"),
            BlobError::Checksum => write!(f, "host input blob checksum mismatch"),
            BlobError::NotUtf8 => write!(f, "host input blob holds a name that is not UTF-8"),
        }
    }
}

/// FNV-1a, 32-bit.
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The blob's total length from its header, for a caller that reads the header first and then
/// the rest. `Err(NoBlob)` if the magic is missing.
pub fn total_len(header: &[u8]) -> Result<usize, BlobError> {
    if header.get(..8) != Some(&MAGIC[..]) {
        return Err(BlobError::NoBlob);
    }
    let version = u32_at(header, 0x08).ok_or(BlobError::Length)?;
    if version != VERSION {
        return Err(BlobError::Version(version));
    }
    let len = u32_at(header, 0x0c).ok_or(BlobError::Length)? as usize;
    if !(HEADER_LEN..=HOST_INPUT_MAX).contains(&len) {
        return Err(BlobError::Length);
    }
    Ok(len)
}

/// A bounds-checked reader over the records.
#[derive(Clone)]
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Option<usize> {
        let v = u32_at(self.bytes, self.at)?;
        self.at = self.at.checked_add(4)?;
        Some(v as usize)
    }

    fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(len)?;
        let b = self.bytes.get(self.at..end)?;
        self.at = end.checked_next_multiple_of(4)?;
        if self.at > self.bytes.len() {
            return None;
        }
        Some(b)
    }

    fn str(&mut self, len: usize) -> Option<Result<&'a str, BlobError>> {
        self.bytes(len)
            .map(|b| core::str::from_utf8(b).map_err(|_| BlobError::NotUtf8))
    }

    fn arg(&mut self) -> Option<Result<&'a str, BlobError>> {
        let len = self.u32()?;
        self.str(len)
    }

    fn file(&mut self) -> Option<Result<(&'a str, &'a [u8]), BlobError>> {
        let name_len = self.u32()?;
        let data_len = self.u32()?;
        let name = match self.str(name_len)? {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        let data = self.bytes(data_len)?;
        Some(Ok((name, data)))
    }
}

/// A parsed, fully validated blob.
#[derive(Clone, Debug)]
pub struct HostInput<'a> {
    bytes: &'a [u8],
    nargs: usize,
    nfiles: usize,
    files_at: usize,
}

impl<'a> HostInput<'a> {
    /// Validates the whole blob: header, checksum, every record, no bytes left over.
    /// `bytes` may be longer than the blob (the rest is ignored).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BlobError> {
        let len = total_len(bytes)?;
        let bytes = bytes.get(..len).ok_or(BlobError::Length)?;
        let nargs = u32_at(bytes, 0x10).ok_or(BlobError::Length)? as usize;
        let nfiles = u32_at(bytes, 0x14).ok_or(BlobError::Length)? as usize;
        let sum = u32_at(bytes, 0x18).ok_or(BlobError::Length)?;
        if checksum(&bytes[HEADER_LEN..]) != sum {
            return Err(BlobError::Checksum);
        }
        let mut c = Cursor {
            bytes,
            at: HEADER_LEN,
        };
        for _ in 0..nargs {
            c.arg().ok_or(BlobError::Truncated)??;
        }
        let files_at = c.at;
        for _ in 0..nfiles {
            c.file().ok_or(BlobError::Truncated)??;
        }
        if c.at != len {
            return Err(BlobError::Truncated);
        }
        Ok(Self {
            bytes,
            nargs,
            nfiles,
            files_at,
        })
    }

    /// The arguments, in order (the mode first).
    pub fn args(&self) -> impl Iterator<Item = &'a str> + '_ {
        let mut c = Cursor {
            bytes: self.bytes,
            at: HEADER_LEN,
        };
        (0..self.nargs).map_while(move |_| c.arg().and_then(Result::ok))
    }

    /// Every file, as (name, contents), in order.
    pub fn files(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        let mut c = Cursor {
            bytes: self.bytes,
            at: self.files_at,
        };
        (0..self.nfiles).map_while(move |_| c.file().and_then(Result::ok))
    }

    /// The contents of the file called `name`.
    pub fn file(&self, name: &str) -> Option<&'a [u8]> {
        self.files().find(|(n, _)| *n == name).map(|(_, d)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pad(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }

    /// The same encoding as `tools/mkblob.py`.
    fn encode(args: &[&str], files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for a in args {
            body.extend_from_slice(&(a.len() as u32).to_le_bytes());
            body.extend_from_slice(a.as_bytes());
            pad(&mut body);
        }
        for (n, d) in files {
            body.extend_from_slice(&(n.len() as u32).to_le_bytes());
            body.extend_from_slice(&(d.len() as u32).to_le_bytes());
            body.extend_from_slice(n.as_bytes());
            pad(&mut body);
            body.extend_from_slice(d);
            pad(&mut body);
        }
        let mut v = Vec::new();
        v.extend_from_slice(&MAGIC);
        v.extend_from_slice(&VERSION.to_le_bytes());
        v.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
        v.extend_from_slice(&(args.len() as u32).to_le_bytes());
        v.extend_from_slice(&(files.len() as u32).to_le_bytes());
        v.extend_from_slice(&checksum(&body).to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    fn reseal(v: &mut [u8]) {
        let sum = checksum(&v[HEADER_LEN..]);
        v[0x18..0x1c].copy_from_slice(&sum.to_le_bytes());
    }

    #[test]
    fn round_trip() {
        let blob = encode(
            &["scenario-check", "a.scn", "b.scn"],
            &[("a.scn", b"vm pkvm\n"), ("b.scn", b""), ("odd", b"12345")],
        );
        let mut padded = blob.clone();
        padded.extend_from_slice(&[0xff; 64]);
        let input = HostInput::parse(&padded).unwrap();
        assert_eq!(
            input.args().collect::<Vec<_>>(),
            ["scenario-check", "a.scn", "b.scn"]
        );
        assert_eq!(input.file("a.scn"), Some(&b"vm pkvm\n"[..]));
        assert_eq!(input.file("b.scn"), Some(&b""[..]));
        assert_eq!(input.file("odd"), Some(&b"12345"[..]));
        assert_eq!(input.file("c.scn"), None);
        assert_eq!(input.files().count(), 3);
    }

    #[test]
    fn zeroed_memory_is_no_blob() {
        assert_eq!(HostInput::parse(&[0; 64]).err(), Some(BlobError::NoBlob));
        assert_eq!(HostInput::parse(&[]).err(), Some(BlobError::NoBlob));
    }

    #[test]
    fn corrupt_blobs_are_refused() {
        let blob = encode(&["scenario", "x"], &[("x", b"data")]);
        // Cut short.
        for cut in [HEADER_LEN - 1, HEADER_LEN + 3, blob.len() - 1] {
            assert!(HostInput::parse(&blob[..cut]).is_err(), "cut at {cut}");
        }
        // A flipped byte breaks the checksum.
        let mut bad = blob.clone();
        bad[HEADER_LEN + 5] ^= 1;
        assert_eq!(HostInput::parse(&bad).err(), Some(BlobError::Checksum));
        // Another version.
        let mut bad = blob.clone();
        bad[8] = 2;
        assert_eq!(HostInput::parse(&bad).err(), Some(BlobError::Version(2)));
        // total_len beyond the maximum.
        let mut bad = blob.clone();
        bad[0x0c..0x10].copy_from_slice(&((HOST_INPUT_MAX + 1) as u32).to_le_bytes());
        assert_eq!(HostInput::parse(&bad).err(), Some(BlobError::Length));
        // A record length running past the end (checksum resealed).
        let mut bad = blob.clone();
        bad[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut bad);
        assert_eq!(HostInput::parse(&bad).err(), Some(BlobError::Truncated));
        // More records claimed than present.
        let mut bad = blob.clone();
        bad[0x14..0x18].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(HostInput::parse(&bad).err(), Some(BlobError::Truncated));
        // Bytes left over after the last record.
        let mut bad = blob.clone();
        bad[0x14..0x18].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(HostInput::parse(&bad).err(), Some(BlobError::Truncated));
        // A name that is not UTF-8.
        let mut bad = encode(&["\u{e9}"], &[]);
        bad[HEADER_LEN + 4] = 0xff;
        reseal(&mut bad);
        assert_eq!(HostInput::parse(&bad).err(), Some(BlobError::NotUtf8));
    }
}
