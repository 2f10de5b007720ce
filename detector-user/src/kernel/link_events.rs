//! Network interfaces appearing and disappearing, from the kernel's rtnetlink link
//! notifications (`RTMGRP_LINK`): the agent re-attaches to a configured interface that is
//! deleted and created again.
//!
//! Only the fact of a change and the indexes of deleted links are taken from the messages;
//! what exists is then looked up by name ([`super::attach::Attachments::reconcile`]), so a
//! lost notification (the socket's buffer overflowing, reported as ENOBUFS) costs nothing
//! but a look-up.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use anyhow::Context as _;
use tokio::io::{Interest, unix::AsyncFd};

/// A non-blocking NETLINK_ROUTE socket subscribed to link notifications.
pub struct LinkEvents {
    fd: AsyncFd<OwnedFd>,
}

impl LinkEvents {
    pub fn open() -> anyhow::Result<LinkEvents> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("opening a NETLINK_ROUTE socket");
        }
        // SAFETY: `raw` is a fresh socket nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid; family and groups are set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: `addr` is a valid sockaddr_nl of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error())
                .context("subscribing to link notifications (RTMGRP_LINK)");
        }
        // SAFETY: the AsyncFd owns the socket, so the fd stays open while registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the link-notification socket with the reactor")?;
        Ok(LinkEvents { fd })
    }

    /// Waits for link notifications and returns the indexes of links deleted among them
    /// (possibly none: any other change, or lost notifications, still means "look again").
    pub async fn next(&self) -> anyhow::Result<Vec<u32>> {
        let mut deleted = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let mut guard = self.fd.readable().await?;
            let mut got = false;
            loop {
                match recv(self.fd.get_ref().as_raw_fd(), &mut buf) {
                    Ok(n) => {
                        got = true;
                        deleted.extend(deleted_links(&buf[..n]));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    // The socket's buffer overflowed: notifications were lost.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => got = true,
                    Err(e) => return Err(e).context("reading link notifications"),
                }
            }
            if got {
                return Ok(deleted);
            }
        }
    }
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Indexes of the links an RTM_DELLINK message in `buf` reports deleted. Layouts from
/// linux/netlink.h (`nlmsghdr`: u32 length, u16 type, u16 flags, u32 seq, u32 pid; messages
/// 4-byte aligned) and linux/rtnetlink.h (`ifinfomsg`: u8 family, u8 pad, u16 type, i32
/// index, ...), in host byte order.
fn deleted_links(mut buf: &[u8]) -> Vec<u32> {
    const NLMSG_HDRLEN: usize = 16;
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        if kind == libc::RTM_DELLINK && len >= NLMSG_HDRLEN + 8 {
            let index = i32::from_ne_bytes(
                buf[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8]
                    .try_into()
                    .expect("4 bytes"),
            );
            if let Ok(i) = u32::try_from(index) {
                out.push(i);
            }
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, index: i32, pad_to: usize) -> Vec<u8> {
        let mut m = Vec::new();
        let len = 16 + 16u32;
        m.extend(len.to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend([0u8, 0]);
        m.extend(1u16.to_ne_bytes());
        m.extend(index.to_ne_bytes());
        m.extend([0u8; 8]);
        m.resize(pad_to, 0);
        m
    }

    #[test]
    fn finds_deleted_indexes_among_link_messages() {
        let mut buf = message(libc::RTM_NEWLINK, 3, 32);
        buf.extend(message(libc::RTM_DELLINK, 7, 32));
        buf.extend(message(libc::RTM_DELLINK, 9, 32));
        assert_eq!(deleted_links(&buf), vec![7, 9]);
        // A truncated trailing message is ignored, not misread.
        buf.extend(&message(libc::RTM_DELLINK, 11, 32)[..20]);
        assert_eq!(deleted_links(&buf), vec![7, 9]);
        assert!(deleted_links(&[]).is_empty());
    }
}
