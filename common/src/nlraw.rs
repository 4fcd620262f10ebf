//! Netlink answers read in place: messages and attributes as byte slices, for the answers we read most (rules,
//! set elements, a link). The netlink crates' parsers build every attribute (and format error contexts) first,
//! which was most of what a plugin that only asks spent in user space. And a few small requests written in place
//! (`Request`): the crates' writers link in the code for every message and attribute they know.

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The (negative) errno of an NLMSG_ERROR's payload; 0 for an acknowledgement.
pub fn errno_of(payload: &[u8]) -> i32 {
    payload.get(..4).map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
}

/// The netlink messages in a buffer as (type, flags, sequence number, payload).
pub fn messages(buf: &[u8]) -> Vec<(u16, u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let flags = u16::from_ne_bytes([buf[off + 6], buf[off + 7]]);
        let seq = u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
        out.push((kind, flags, seq, &buf[off + 16..off + len]));
        off += (len + 3) & !3;
    }
    out
}

/// The attributes in `buf` as (type without flags, value).
pub fn nlas(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[off], buf[off + 1]]));
        let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & NLA_TYPE_MASK;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let value = &buf[off + 4..off + len];
        off += (len + 3) & !3;
        Some((kind, value))
    })
}

/// A string attribute's bytes, without its terminating NUL (to compare with a name without making a String).
pub fn unterminated(value: &[u8]) -> &[u8] {
    value.strip_suffix(&[0]).unwrap_or(value)
}

/// A string attribute's value, without its terminating NUL.
pub fn string(value: &[u8]) -> String {
    String::from_utf8_lossy(unterminated(value)).into_owned()
}

/// A u32 attribute's value (native byte order); None when it is too short.
pub fn u32_of(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

/// A netlink request: its header, the family's fixed header (`ifinfomsg` for a link), then attributes, each
/// padded to 4 bytes as the kernel reads them.
pub struct Request(Vec<u8>);

impl Request {
    pub fn new(kind: u16, flags: u16, seq: u32, fixed: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // the length, set by `bytes`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        let mut request = Request(buf);
        request.append_padded(fixed);
        request
    }

    pub fn attribute(mut self, kind: u16, value: &[u8]) -> Self {
        // Longer than an attribute can be (a hostile interface name): a length the kernel refuses, not a panic.
        let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.append_padded(value);
        self
    }

    fn append_padded(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        self.0.resize((self.0.len() + 3) & !3, 0);
    }

    /// The message, its length in place.
    pub fn bytes(mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len()).unwrap_or(u32::MAX);
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_read_in_place_and_stop_at_a_bad_length() {
        // "eth0\0" (type 3, padded to 12), a u32 7 (type 0x8000|4: the nested flag is masked), then a length of 2.
        let buf = [9, 0, 3, 0, b'e', b't', b'h', b'0', 0, 0, 0, 0, 8, 0, 4, 0x80, 7, 0, 0, 0, 2, 0, 1, 0];
        let attrs: Vec<_> = nlas(&buf).collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!((attrs[0].0, string(attrs[0].1).as_str()), (3, "eth0"));
        assert_eq!((attrs[1].0, u32_of(attrs[1].1)), (4, Some(7)));
        assert_eq!(u32_of(&[1, 2]), None);
    }

    #[test]
    fn messages_end_at_a_short_or_overlong_header() {
        let mut buf = vec![20, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff];
        buf.extend([200, 0, 0, 0, 3, 0, 0, 0]);
        let m = messages(&buf);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].0, m[0].2, errno_of(m[0].3)), (NLMSG_ERROR, 5, -2));
    }
}
