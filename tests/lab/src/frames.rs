//! Crafted Ethernet frames for running the kernel program with BPF_PROG_TEST_RUN.
//!
//! A [`Frame`] is one TCP segment with whatever L2/L3 wrapping a test needs (VLAN tags,
//! IPv4 options, IPv6 extension headers); a [`Conversation`] keeps sequence numbers for a
//! client and a server so that tests read like the exchange they model.

use std::net::IpAddr;

use detector_common::tls::{content_type, extension, handshake as hs, version};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

#[derive(Clone, Debug)]
pub struct Frame {
    /// (TPID, TCI) pairs, outermost first: 0x8100 for 802.1Q, 0x88a8 for 802.1ad.
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
    /// Raw IPv4 option bytes (padded to 4 by the builder).
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers in order: (header type, body after next-header/length).
    pub ipv6_ext: Vec<(u8, Vec<u8>)>,
    /// IPv4 fragment field (flags + offset), for fragment tests.
    pub ipv4_frag: u16,
    /// Overrides the IP protocol number (e.g. 17 for a UDP packet).
    pub protocol: u8,
    /// The advertised window, as sent (unscaled).
    pub window: u16,
    /// Raw TCP option bytes (padded to 4 with end-of-options by the builder).
    pub tcp_options: Vec<u8>,
}

impl Frame {
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Frame {
        Frame {
            vlans: vec![],
            src,
            dst,
            sport,
            dport,
            seq: 0,
            ack: 0,
            flags: ACK,
            payload: vec![],
            ipv4_options: vec![],
            ipv6_ext: vec![],
            ipv4_frag: 0,
            protocol: 6,
            window: 65535,
            tcp_options: vec![],
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]); // dst MAC
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]); // src MAC
        for (tpid, tci) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        let tcp = self.tcp_header();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut opts = self.ipv4_options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0); // end-of-options padding
                }
                let ihl = 20 + opts.len();
                let total = ihl + tcp.len() + self.payload.len();
                f.push(0x40 | (ihl / 4) as u8);
                f.push(0);
                f.extend_from_slice(&(total as u16).to_be_bytes());
                f.extend_from_slice(&[0, 1]);
                f.extend_from_slice(&self.ipv4_frag.to_be_bytes());
                f.push(64);
                f.push(self.protocol);
                f.extend_from_slice(&[0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend_from_slice(&opts);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut ext = Vec::new();
                let mut types: Vec<u8> = self.ipv6_ext.iter().map(|(t, _)| *t).collect();
                types.push(self.protocol);
                for (i, (_, body)) in self.ipv6_ext.iter().enumerate() {
                    // Header = next header, length in 8-octet units minus one, body; padded.
                    let mut h = vec![types[i + 1], 0];
                    h.extend_from_slice(body);
                    while !h.len().is_multiple_of(8) {
                        h.push(0);
                    }
                    h[1] = (h.len() / 8 - 1) as u8;
                    ext.extend_from_slice(&h);
                }
                let plen = ext.len() + tcp.len() + self.payload.len();
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(plen as u16).to_be_bytes());
                f.push(types[0]);
                f.push(64);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend_from_slice(&ext);
            }
            _ => panic!("source and destination must be of one family"),
        }
        f.extend_from_slice(&tcp);
        f.extend_from_slice(&self.payload);
        f
    }

    /// Offsets where each header ends, for truncation tests: Ethernet (with tags), IP (with
    /// options/extensions), TCP.
    pub fn header_ends(&self) -> [usize; 3] {
        let l2 = 14 + 4 * self.vlans.len();
        let l3 = match self.src {
            IpAddr::V4(_) => 20 + self.ipv4_options.len().div_ceil(4) * 4,
            IpAddr::V6(_) => {
                40 + self
                    .ipv6_ext
                    .iter()
                    .map(|(_, b)| (b.len() + 2).div_ceil(8) * 8)
                    .sum::<usize>()
            }
        };
        [
            l2,
            l2 + l3,
            l2 + l3 + 20 + self.tcp_options.len().div_ceil(4) * 4,
        ]
    }

    fn tcp_header(&self) -> Vec<u8> {
        let mut opts = self.tcp_options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0); // end-of-options padding
        }
        let mut t = Vec::with_capacity(20 + opts.len());
        t.extend_from_slice(&self.sport.to_be_bytes());
        t.extend_from_slice(&self.dport.to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.push((((20 + opts.len()) / 4) as u8) << 4);
        t.push(self.flags);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(&opts);
        t
    }
}

/// A TCP connection between a client and a server, with sequence numbers kept.
pub struct Conversation {
    pub client: (IpAddr, u16),
    pub server: (IpAddr, u16),
    client_seq: u32,
    server_seq: u32,
    /// Applied to every frame built (VLAN tags, IP options...).
    pub template: Frame,
}

impl Conversation {
    pub fn new(client: (IpAddr, u16), server: (IpAddr, u16)) -> Conversation {
        Conversation {
            client,
            server,
            client_seq: 1_000,
            server_seq: 50_000,
            template: Frame::tcp(client.0, client.1, server.0, server.1),
        }
    }

    /// The same endpoints with other initial sequence numbers: the 4-tuple reused by a
    /// new connection. `client_isn` is what the client's SYN carries, `server_isn` the
    /// server's SYN-ACK.
    pub fn renumbered(mut self, client_isn: u32, server_isn: u32) -> Conversation {
        self.client_seq = client_isn.wrapping_add(1);
        self.server_seq = server_isn.wrapping_add(1);
        self
    }

    pub fn v4(server_port: u16) -> Conversation {
        Conversation::new(
            ("10.1.0.1".parse().unwrap(), 40_000),
            ("10.2.0.1".parse().unwrap(), server_port),
        )
    }

    fn frame(&self, from_client: bool, flags: u8, payload: &[u8]) -> Frame {
        let mut f = self.template.clone();
        let ((src, sport), (dst, dport)) = if from_client {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        f.src = src;
        f.sport = sport;
        f.dst = dst;
        f.dport = dport;
        f.flags = flags;
        f.payload = payload.to_vec();
        if from_client {
            f.seq = self.client_seq;
            f.ack = self.server_seq;
        } else {
            f.seq = self.server_seq;
            f.ack = self.client_seq;
        }
        f
    }

    pub fn syn(&self) -> Frame {
        let mut f = self.frame(true, SYN, &[]);
        f.seq = self.client_seq.wrapping_sub(1);
        f.ack = 0;
        f
    }

    /// The server's SYN-ACK: what makes the kernel create the flow with known roles.
    pub fn syn_ack(&self) -> Frame {
        let mut f = self.frame(false, SYN | ACK, &[]);
        f.seq = self.server_seq.wrapping_sub(1);
        f
    }

    pub fn client(&mut self, payload: &[u8]) -> Frame {
        let f = self.frame(true, ACK | PSH, payload);
        self.client_seq = self.client_seq.wrapping_add(payload.len() as u32);
        f
    }

    pub fn server(&mut self, payload: &[u8]) -> Frame {
        let f = self.frame(false, ACK | PSH, payload);
        self.server_seq = self.server_seq.wrapping_add(payload.len() as u32);
        f
    }

    /// `data` from the client cut into segments of the given sizes (the last takes the
    /// rest), in order; reorder or repeat them to model the network.
    pub fn client_segments(&mut self, data: &[u8], sizes: &[usize]) -> Vec<Frame> {
        split(data, sizes)
            .into_iter()
            .map(|chunk| self.client(chunk))
            .collect()
    }

    pub fn server_segments(&mut self, data: &[u8], sizes: &[usize]) -> Vec<Frame> {
        split(data, sizes)
            .into_iter()
            .map(|chunk| self.server(chunk))
            .collect()
    }

    pub fn client_addr(&self) -> std::net::SocketAddr {
        self.client.into()
    }

    pub fn server_addr(&self) -> std::net::SocketAddr {
        self.server.into()
    }

    pub fn client_flags(&mut self, flags: u8) -> Frame {
        self.frame(true, flags, &[])
    }

    pub fn server_flags(&mut self, flags: u8) -> Frame {
        self.frame(false, flags, &[])
    }
}

fn split<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    for &n in sizes {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// A TLS record: content type, version 1.2, length, body.
pub fn record(typ: u8, body: &[u8]) -> Vec<u8> {
    let mut r = record_header(typ, body.len() as u16);
    r.extend_from_slice(body);
    r
}

/// A TLS 1.2 record header alone, claiming `len` bytes of body.
pub fn record_header(typ: u8, len: u16) -> Vec<u8> {
    let mut r = vec![typ];
    r.extend_from_slice(&version::TLS1_2.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    r
}

/// A handshake message: type, 3-byte length, body.
pub fn handshake(msg_type: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![msg_type];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    m.extend_from_slice(body);
    m
}

/// A ClientHello or ServerHello body.
#[derive(Clone, Debug)]
pub struct Hello {
    pub version: u16,
    pub session_id: Vec<u8>,
    pub extensions: Vec<(u16, Vec<u8>)>,
}

impl Hello {
    pub fn client(host: &str) -> Hello {
        Hello {
            version: version::TLS1_2,
            session_id: vec![],
            extensions: vec![(extension::SERVER_NAME, sni_ext(host))],
        }
    }

    pub fn server() -> Hello {
        Hello {
            version: version::TLS1_2,
            session_id: vec![],
            extensions: vec![],
        }
    }

    pub fn with(mut self, ext_type: u16, data: Vec<u8>) -> Hello {
        self.extensions.push((ext_type, data));
        self
    }

    fn extensions_bytes(&self) -> Vec<u8> {
        let mut ext = Vec::new();
        for (t, d) in &self.extensions {
            ext.extend_from_slice(&t.to_be_bytes());
            ext.extend_from_slice(&(d.len() as u16).to_be_bytes());
            ext.extend_from_slice(d);
        }
        ext
    }

    /// The ClientHello handshake message.
    pub fn client_hello(&self) -> Vec<u8> {
        let mut body = self.version.to_be_bytes().to_vec();
        body.extend_from_slice(&[0x11; 32]);
        body.push(self.session_id.len() as u8);
        body.extend_from_slice(&self.session_id);
        // Two cipher suites and the null compression method: the walker skips both by
        // their lengths, so their values are any.
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0xc0, 0x2f]);
        body.extend_from_slice(&[1, 0]);
        let ext = self.extensions_bytes();
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        handshake(hs::CLIENT_HELLO, &body)
    }

    /// The ServerHello handshake message.
    pub fn server_hello(&self) -> Vec<u8> {
        let mut body = self.version.to_be_bytes().to_vec();
        body.extend_from_slice(&[0x22; 32]);
        body.push(self.session_id.len() as u8);
        body.extend_from_slice(&self.session_id);
        body.extend_from_slice(&[0xc0, 0x2f, 0]);
        let ext = self.extensions_bytes();
        if !ext.is_empty() {
            body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
            body.extend_from_slice(&ext);
        }
        handshake(hs::SERVER_HELLO, &body)
    }
}

pub fn sni_ext(host: &str) -> Vec<u8> {
    let name = host.as_bytes();
    let mut d = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    d.push(extension::SERVER_NAME_HOST);
    d.extend_from_slice(&(name.len() as u16).to_be_bytes());
    d.extend_from_slice(name);
    d
}

/// supported_versions as a client sends it (a list).
pub fn versions_ext(versions: &[u16]) -> Vec<u8> {
    let mut d = vec![(versions.len() * 2) as u8];
    for v in versions {
        d.extend_from_slice(&v.to_be_bytes());
    }
    d
}

/// A minimal but well-formed TLS 1.2-style ClientHello record, with SNI `host`.
pub fn client_hello(host: &str) -> Vec<u8> {
    // First ClientHellos usually say TLS 1.0 on the record layer.
    tls10(record(
        content_type::HANDSHAKE,
        &Hello::client(host).client_hello(),
    ))
}

/// The record with TLS 1.0 in its header, as the first records of a session often say.
pub fn tls10(mut rec: Vec<u8>) -> Vec<u8> {
    rec[1..3].copy_from_slice(&version::TLS1_0.to_be_bytes());
    rec
}

/// A plaintext alert record.
pub fn alert(level: u8, description: u8) -> Vec<u8> {
    record(content_type::ALERT, &[level, description])
}
