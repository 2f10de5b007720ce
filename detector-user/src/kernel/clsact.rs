//! The `clsact` qdisc the netlink TC attachment (kernels before 6.6, which have no TCX)
//! hangs its filter on: which filters it holds, and removing it again when the agent
//! created it and nothing but the agent's own filter is on it.
//!
//! aya adds the qdisc but has no call to delete one or to list filters, so this speaks
//! rtnetlink itself: one request, read until the kernel's answer is complete.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
const PARENT_INGRESS: u32 = 0xFFFF_FFF2;
const PARENT_EGRESS: u32 = 0xFFFF_FFF3;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_NAME: u16 = 7;
const NLA_TYPE_MASK: u16 = 0x3FFF;
const NLMSG_HDR: usize = 16;
const TCMSG: usize = 20;

/// A filter on one of the qdisc's two hooks: its name when it is a BPF filter that has one.
#[derive(Debug, PartialEq, Eq)]
pub struct Filter {
    pub egress: bool,
    pub bpf_name: Option<String>,
}

/// Every filter on `ifindex`'s clsact qdisc, both hooks.
pub fn filters(ifindex: u32) -> io::Result<Vec<Filter>> {
    let mut all = Vec::new();
    for (parent, egress) in [(PARENT_INGRESS, false), (PARENT_EGRESS, true)] {
        let sock = Socket::open()?;
        let replies = sock.request(
            libc::RTM_GETTFILTER,
            libc::NLM_F_DUMP as u16,
            ifindex,
            0,
            parent,
            &[],
        )?;
        for msg in replies {
            // A dump lists each filter chain's head (handle 0, no options) before its
            // filters.
            if handle_of(&msg) == 0 {
                continue;
            }
            all.push(Filter {
                egress,
                bpf_name: bpf_name(&msg),
            });
        }
    }
    Ok(all)
}

/// Deletes the clsact qdisc of `ifindex` (and with it any filter on it).
pub fn delete(ifindex: u32) -> io::Result<()> {
    let kind = attr(TCA_KIND, b"clsact\0");
    Socket::open()?
        .request(
            libc::RTM_DELQDISC,
            libc::NLM_F_ACK as u16,
            ifindex,
            CLSACT_HANDLE,
            TC_H_CLSACT,
            &kind,
        )
        .map(drop)
}

fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
    let len = 4 + data.len();
    let mut v = Vec::with_capacity(len.next_multiple_of(4));
    v.extend_from_slice(&(len as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(data);
    v.resize(len.next_multiple_of(4), 0);
    v
}

/// The attributes after a tcmsg, as (type, payload).
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, &b[4..len]));
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    out
}

/// `msg` is a tcmsg and its attributes (the netlink header removed).
fn handle_of(msg: &[u8]) -> u32 {
    msg.get(8..12)
        .map(|h| u32::from_ne_bytes(h.try_into().expect("4 bytes")))
        .unwrap_or(0)
}

fn bpf_name(msg: &[u8]) -> Option<String> {
    let a = attrs(msg.get(TCMSG..)?);
    let kind = a.iter().find(|(k, _)| *k == TCA_KIND)?.1;
    if kind.split(|&c| c == 0).next() != Some(b"bpf".as_slice()) {
        return None;
    }
    let options = a.iter().find(|(k, _)| *k == TCA_OPTIONS)?.1;
    let name = attrs(options)
        .into_iter()
        .find(|(k, _)| *k == TCA_BPF_NAME)?
        .1;
    let name = name.split(|&c| c == 0).next()?;
    Some(String::from_utf8_lossy(name).into_owned())
}

struct Socket(OwnedFd);

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh socket nobody else owns.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Sends one tc request and returns the payloads (tcmsg onwards) of the kernel's
    /// answers: the messages of a dump, nothing for an acknowledged change; a netlink
    /// error becomes the io::Error of its errno.
    fn request(
        &self,
        kind: u16,
        flags: u16,
        ifindex: u32,
        handle: u32,
        parent: u32,
        extra: &[u8],
    ) -> io::Result<Vec<Vec<u8>>> {
        let len = NLMSG_HDR + TCMSG + extra.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        // tcmsg: family, padding, ifindex, handle, parent, info.
        m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        m.extend_from_slice(&ifindex.to_ne_bytes());
        m.extend_from_slice(&handle.to_ne_bytes());
        m.extend_from_slice(&parent.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(extra);
        // SAFETY: `m` is a valid buffer of its length.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        // A dump of one interface's filters fits a few reads; the bound keeps a kernel
        // that never says DONE from holding the agent.
        for _ in 0..1024 {
            // SAFETY: `buf` is a valid writable buffer of its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut b = &buf[..n as usize];
            while b.len() >= NLMSG_HDR {
                let mlen = u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
                let mtype = u16::from_ne_bytes([b[4], b[5]]);
                if mlen < NLMSG_HDR || mlen > b.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "short netlink message",
                    ));
                }
                let payload = &b[NLMSG_HDR..mlen];
                match i32::from(mtype) {
                    libc::NLMSG_DONE => return Ok(out),
                    libc::NLMSG_ERROR => {
                        let errno = payload
                            .get(0..4)
                            .map(|e| i32::from_ne_bytes(e.try_into().expect("4 bytes")))
                            .unwrap_or(-libc::EIO);
                        return if errno == 0 {
                            Ok(out)
                        } else {
                            Err(io::Error::from_raw_os_error(-errno))
                        };
                    }
                    _ => out.push(payload.to_vec()),
                }
                b = &b[mlen.next_multiple_of(4).min(b.len())..];
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "netlink answer never ended",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcmsg(handle: u32, body: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; TCMSG];
        m[8..12].copy_from_slice(&handle.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn a_bpf_filter_is_known_by_its_name() {
        let mut body = attr(TCA_KIND, b"bpf\0");
        body.extend(attr(TCA_OPTIONS, &attr(TCA_BPF_NAME, b"detector_tc\0")));
        let msg = tcmsg(1, &body);
        assert_eq!(handle_of(&msg), 1);
        assert_eq!(bpf_name(&msg).as_deref(), Some("detector_tc"));
        // Another classifier kind has no BPF name even with the same attribute number.
        let mut body = attr(TCA_KIND, b"u32\0");
        body.extend(attr(TCA_OPTIONS, &attr(TCA_BPF_NAME, b"detector_tc\0")));
        assert_eq!(bpf_name(&tcmsg(1, &body)), None);
        // Truncated attributes end the walk instead of reading past the message.
        assert!(attrs(&[8, 0, 1, 0, b'b']).is_empty());
    }
}
