//! Frames for the kernel fuzzer: valid TCP/TLS sessions (the lab's frame builders) played
//! interleaved, some frames mutated (bit flips, truncation, length fields, TCP flags and
//! options, TLS record headers, VLAN tags, IPv4 options, IPv6 extension headers, sequence
//! numbers), some lost, repeated or reordered, some random bytes. Deterministic for a seed.

use std::{collections::VecDeque, net::IpAddr, time::Duration};

use detector_common::tls::{
    alert::{self, CLOSE_NOTIFY, FATAL, HANDSHAKE_FAILURE, UNKNOWN_CA, WARNING},
    content_type::{ALERT, APPLICATION_DATA, CHANGE_CIPHER_SPEC, HANDSHAKE, HEARTBEAT},
    extension, handshake as hs, version,
};
use detector_user::capture::segment::MAX_FRAME;

use crate::frames::{
    ACK, Conversation, FIN, Frame, Hello, PSH, RST, SYN, client_hello, handshake, record,
    record_header, versions_ext,
};

/// splitmix64: small, fast, and the same sequence for a seed on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn byte(&mut self) -> u8 {
        self.u64() as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// Fewer than `n` random bytes.
    pub fn bytes_below(&mut self, n: usize) -> Vec<u8> {
        let len = self.below(n);
        self.bytes(len)
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

/// One step of a scripted session.
enum Step {
    Frame(Frame),
    /// Quiet for longer than the idle threshold.
    Idle,
}

/// What the next frame is and how far the program's clock moves before it.
pub struct Next {
    pub frame: Vec<u8>,
    pub advance_ns: u64,
    pub how: How,
}

/// Where a frame came from, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum How {
    Valid,
    Mutated,
    Repeated,
    Random,
}

pub struct Generator {
    rng: Rng,
    idle: Duration,
    sessions: Vec<VecDeque<Step>>,
    recent: VecDeque<Vec<u8>>,
    /// Sessions started so far: each gets its own ports.
    started: u32,
}

const SESSIONS: usize = 6;
const RECENT: usize = 32;

impl Generator {
    pub fn new(seed: u64, idle: Duration) -> Generator {
        let mut g = Generator {
            rng: Rng::new(seed),
            idle,
            sessions: Vec::new(),
            recent: VecDeque::new(),
            started: 0,
        };
        for _ in 0..SESSIONS {
            let s = g.session();
            g.sessions.push(s);
        }
        g
    }

    pub fn next_frame(&mut self) -> Next {
        let mut advance_ns = 1_000_000 + self.rng.below(20) as u64 * 1_000_000;
        loop {
            let roll = self.rng.below(100);
            if roll < 5 {
                let n = 14 + self.rng.below(1_600);
                let mut f = self.rng.bytes(n);
                // Mostly an IP ethertype, so the random bytes reach the IP and TCP parsers.
                if self.rng.chance(80) {
                    let t = self.rng.pick(&[0x0800u16, 0x86dd, 0x8100, 0x88a8]);
                    f[12..14].copy_from_slice(&t.to_be_bytes());
                }
                return self.out(f, advance_ns, How::Random);
            }
            if roll < 10 && !self.recent.is_empty() {
                let i = self.rng.below(self.recent.len());
                let mut f = self.recent[i].clone();
                let how = if self.rng.chance(50) {
                    mutate_bytes(&mut self.rng, &mut f);
                    How::Mutated
                } else {
                    How::Repeated
                };
                return self.out(f, advance_ns, how);
            }
            let i = self.rng.below(self.sessions.len());
            let step = match self.sessions[i].pop_front() {
                Some(s) => s,
                None => {
                    self.sessions[i] = self.session();
                    continue;
                }
            };
            let mut frame = match step {
                Step::Idle => {
                    advance_ns +=
                        self.idle.as_nanos() as u64 + self.rng.below(3_000) as u64 * 1_000_000;
                    continue;
                }
                Step::Frame(f) => f,
            };
            if roll < 13 {
                continue; // lost on the way
            }
            if roll < 16 {
                // Overtaken by the next frame of its session.
                if let Some(Step::Frame(next)) = self.sessions[i].pop_front() {
                    self.sessions[i].push_front(Step::Frame(frame));
                    frame = next;
                }
            }
            if roll < 45 {
                mutate_frame(&mut self.rng, &mut frame);
                let mut f = frame.build();
                if self.rng.chance(60) {
                    mutate_bytes(&mut self.rng, &mut f);
                }
                return self.out(f, advance_ns, How::Mutated);
            }
            let f = frame.build();
            return self.out(f, advance_ns, How::Valid);
        }
    }

    fn out(&mut self, mut frame: Vec<u8>, advance_ns: u64, how: How) -> Next {
        // BPF_PROG_TEST_RUN refuses less than an Ethernet header, and takes one page.
        if frame.len() < 14 {
            frame.resize(14, 0);
        }
        frame.truncate(MAX_FRAME);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(frame.clone());
        Next {
            frame,
            advance_ns,
            how,
        }
    }

    /// A new scripted session: one of the field cases' shapes or a clean one, over
    /// IPv4 or IPv6 with the wrapping varied.
    fn session(&mut self) -> VecDeque<Step> {
        self.started = self.started.wrapping_add(1);
        let r = &mut self.rng;
        let cport = 1024 + (self.started % 60_000) as u16;
        let v6 = r.chance(40);
        let (c, s): (IpAddr, IpAddr) = if v6 {
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
        } else {
            ("10.1.0.1".parse().unwrap(), "10.2.0.1".parse().unwrap())
        };
        let port = r.pick(&[443, 443, 8443, 80, 25]);
        let mut conv = Conversation::new((c, cport), (s, port));
        if r.chance(15) {
            conv.template.vlans = vec![(0x8100, r.below(4096) as u16)];
        }
        if !v6 && r.chance(10) {
            conv.template.ipv4_options = vec![1; 4];
        }
        if v6 && r.chance(15) {
            conv.template.ipv6_ext = vec![(60, vec![1, 4, 0, 0, 0, 0])];
        }
        let mut steps = VecDeque::new();
        let mut push = |f: Frame| steps.push_back(Step::Frame(f));
        if r.chance(90) {
            push(conv.syn());
            push(conv.syn_ack());
            push(conv.client_flags(ACK));
        }
        let host = "fuzz.example";
        let ch = if r.chance(30) {
            // Resumption offers and TLS 1.3.
            let hello = Hello::client(host)
                .with(extension::SESSION_TICKET, r.bytes_below(64))
                .with(
                    extension::SUPPORTED_VERSIONS,
                    versions_ext(&[version::TLS1_3, version::TLS1_2]),
                );
            record(HANDSHAKE, &hello.client_hello())
        } else {
            client_hello(host)
        };
        let sh = record(HANDSHAKE, &Hello::server().server_hello());
        let app = |r: &mut Rng| {
            record(APPLICATION_DATA, &{
                let n = 1 + r.below(300);
                r.bytes(n)
            })
        };
        let segs = |r: &mut Rng| [1 + r.below(8), 1 + r.below(64)];
        match r.below(8) {
            0 => {
                let sizes = segs(r);
                for f in conv.client_segments(&ch, &sizes) {
                    push(f);
                }
                push(conv.server(&sh));
                push(conv.server(&record(
                    HANDSHAKE,
                    &handshake(hs::CERTIFICATE, &r.bytes_below(200)),
                )));
                push(conv.client(&record(CHANGE_CIPHER_SPEC, &[1])));
                push(conv.client(&record(HANDSHAKE, &r.bytes(40))));
                push(conv.server(&record(CHANGE_CIPHER_SPEC, &[1])));
                push(conv.server(&record(HANDSHAKE, &r.bytes(40))));
                for _ in 0..r.below(4) {
                    let a = app(r);
                    push(conv.client(&a));
                    let a = app(r);
                    push(conv.server(&a));
                }
                push(conv.client(&record(ALERT, &r.bytes(26))));
                push(conv.client_flags(ACK | FIN));
                push(conv.server_flags(ACK | FIN));
            }
            1 => {
                push(conv.client(&ch));
                let d = r.pick(&[HANDSHAKE_FAILURE, UNKNOWN_CA, alert::PROTOCOL_VERSION]);
                push(conv.server(&crate::frames::alert(FATAL, d)));
                push(conv.server_flags(ACK | FIN));
            }
            2 => {
                push(conv.client(&ch));
                if r.chance(50) {
                    push(conv.server(&sh));
                }
                push(conv.server_flags(ACK | RST));
            }
            3 => {
                push(conv.client(b"GET / HTTP/1.1\r\nHost: fuzz.example\r\n\r\n"));
                push(conv.server(b"HTTP/1.1 400 Bad Request\r\n\r\n"));
                push(conv.server_flags(ACK | FIN));
            }
            4 => {
                push(conv.client(&ch));
                push(conv.server(r.pick(&[
                    &b"HTTP/1.1 400 Bad Request\r\n"[..],
                    b"220 smtp ready\r\n",
                    b"<html><body>x</body></html>",
                ])));
            }
            5 => {
                push(conv.client(&ch));
                push(conv.server(&sh));
                let a = app(r);
                push(conv.client(&a));
                let a = app(r);
                push(conv.server(&a));
                push(conv.server(&record(HANDSHAKE, &handshake(hs::HELLO_REQUEST, &[]))));
                push(conv.client(&record(HANDSHAKE, &r.bytes(60))));
                push(conv.client(&crate::frames::alert(WARNING, CLOSE_NOTIFY)));
            }
            6 => {
                push(conv.client(&ch));
                push(conv.server(&sh));
                let a = app(r);
                push(conv.client(&a));
                let a = app(r);
                push(conv.server(&a));
                steps.push_back(Step::Idle);
                match r.below(4) {
                    0 => steps.push_back(Step::Frame(conv.server_flags(ACK | RST))),
                    1 => steps.push_back(Step::Frame(conv.client_flags(ACK | FIN))),
                    _ => {
                        // A resumption retransmitted into a path that forgot the flow.
                        let a = app(r);
                        let f = conv.client(&a);
                        for _ in 0..3 {
                            steps.push_back(Step::Frame(f.clone()));
                        }
                        if r.chance(50) {
                            steps.push_back(Step::Frame(conv.server_flags(RST)));
                        }
                    }
                }
            }
            _ => {
                // Records of every type, cut across segments, and a TLS 1.3 session's end:
                // a close_notify-sized record, then FIN.
                let offer = Hello::client(host).with(
                    extension::SUPPORTED_VERSIONS,
                    versions_ext(&[version::TLS1_3, version::TLS1_2]),
                );
                let mut stream = record(HANDSHAKE, &offer.client_hello());
                for _ in 0..1 + r.below(5) {
                    let t = r.pick(&[HANDSHAKE, APPLICATION_DATA, ALERT, HEARTBEAT]);
                    let n = r.below(100);
                    stream.extend(record_header(t, n as u16));
                    stream.extend(r.bytes(n));
                }
                let sizes = segs(r);
                for f in conv.client_segments(&stream, &sizes) {
                    push(f);
                }
                let chosen = Hello::server().with(
                    extension::SUPPORTED_VERSIONS,
                    version::TLS1_3.to_be_bytes().to_vec(),
                );
                push(conv.server(&record(HANDSHAKE, &chosen.server_hello())));
                let a = app(r);
                push(conv.server(&a));
                push(conv.server(&record(APPLICATION_DATA, &r.bytes(19))));
                push(conv.server_flags(ACK | FIN | PSH));
            }
        }
        steps
    }
}

/// Changes made on the frame's description, before it is built.
fn mutate_frame(r: &mut Rng, f: &mut Frame) {
    for _ in 0..1 + r.below(3) {
        match r.below(9) {
            0 => f.flags = r.byte(),
            1 => f.flags ^= r.pick(&[SYN, RST, FIN, ACK, PSH, 0x20, 0x40, 0x80]),
            2 => {
                f.seq = match r.below(3) {
                    0 => f.seq.wrapping_add(r.below(3_000) as u32),
                    1 => f.seq.wrapping_sub(r.below(3_000) as u32),
                    _ => r.u64() as u32,
                }
            }
            3 => {
                let n = r.below(4);
                f.vlans = (0..n)
                    .map(|_| (r.pick(&[0x8100, 0x88a8]), r.below(4096) as u16))
                    .collect();
            }
            4 if f.src.is_ipv6() => {
                let n = r.below(7);
                f.ipv6_ext = (0..n)
                    .map(|_| {
                        let t = r.pick(&[0, 43, 60, 44, 60, 0, 135, 17]);
                        (t, {
                            let n = 6 + 8 * r.below(4);
                            r.bytes(n)
                        })
                    })
                    .collect();
            }
            4 => {
                let n = r.below(41);
                f.ipv4_options = r.bytes(n);
            }
            5 if f.src.is_ipv4() => {
                let any = u16::from(r.byte());
                f.ipv4_frag = r.pick(&[0x2000, 0x0001, 0x4000, any])
            }
            5 => f.protocol = r.pick(&[17, 6, 58, 0]),
            6 => {
                // A TLS record header, plausible or not, at the payload's start or within.
                let any = r.byte();
                let typ = r.pick(&[
                    CHANGE_CIPHER_SPEC,
                    ALERT,
                    HANDSHAKE,
                    APPLICATION_DATA,
                    HEARTBEAT,
                    any,
                ]);
                let ver = if r.chance(70) {
                    [version::MAJOR, r.below(6) as u8]
                } else {
                    [r.byte(), r.byte()]
                };
                let any = r.u64() as u16;
                let len = r.pick(&[0u16, 1, 2, 5, 0x4000, 0x4001, 0xffff, any]);
                let mut h = vec![typ, ver[0], ver[1]];
                h.extend_from_slice(&len.to_be_bytes());
                let at = if f.payload.is_empty() {
                    0
                } else {
                    r.below(f.payload.len())
                };
                f.payload.splice(at..at, h);
            }
            7 => {
                if !f.payload.is_empty() {
                    let at = r.below(f.payload.len());
                    f.payload.truncate(at);
                }
            }
            _ => {
                // A plaintext alert of any level and description.
                let rec = crate::frames::alert(r.byte() % 4, r.byte());
                f.payload.extend(rec);
            }
        }
    }
}

/// Changes made on the built bytes: whatever the frame builder cannot express.
pub fn mutate_bytes(r: &mut Rng, f: &mut Vec<u8>) {
    use super::oracle::{Class, classify};
    for _ in 0..1 + r.below(3) {
        // Read again each time: the change before may have moved or cut the headers.
        let seg = match classify(f) {
            Class::Tcp(s) => Some(s),
            _ => None,
        };
        match (r.below(7), &seg) {
            (0, _) | (1, None) => {
                for _ in 0..1 + r.below(8) {
                    let i = r.below(f.len());
                    f[i] ^= 1 << r.below(8);
                }
            }
            (1, Some(_)) => {
                let cut = 14 + r.below(f.len().saturating_sub(13).max(1));
                f.truncate(cut);
            }
            (2, Some(s)) => {
                // The IP length field: random, off by a little, or zero (GSO's "see the
                // packet").
                let (at, base) = if f.get(s.l3).is_some_and(|b| b >> 4 == 4) {
                    (s.l3 + 2, f.len() - s.l3)
                } else {
                    (s.l3 + 4, f.len().saturating_sub(s.l3 + 40))
                };
                let v = match r.below(3) {
                    0 => 0,
                    1 => (base as i64 + r.below(9) as i64 - 4).clamp(0, 0xffff) as u16,
                    _ => r.u64() as u16,
                };
                if at + 2 <= f.len() {
                    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
            (3, Some(s)) => {
                // TCP data offset or IPv4 header length.
                if r.chance(50) {
                    f[s.l4 + 12] = (r.byte() & 0xf0) | (f[s.l4 + 12] & 0x0f);
                } else if f[s.l3] >> 4 == 4 {
                    f[s.l3] = 0x40 | (r.byte() & 0x0f);
                }
            }
            (4, Some(s)) => {
                // TCP options: NOPs, MSS, SACK-permitted, timestamps, window scale or
                // bytes at random, with the data offset and IP length following.
                let mut opts: Vec<u8> = match r.below(4) {
                    0 => vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
                    1 => vec![2, 4, 5, 0xb4, 4, 2, 3, 3, 7],
                    2 => vec![5, 10, 0, 0, 0, 1, 0, 0, 0, 9],
                    _ => r.bytes_below(40),
                };
                opts.truncate(40);
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let doff = usize::from(f[s.l4 + 12] >> 4) * 4;
                let at = (s.l4 + doff).min(f.len());
                f.splice(at..at, opts.iter().copied());
                let new_doff = ((doff + opts.len()) / 4).min(15) as u8;
                f[s.l4 + 12] = (new_doff << 4) | (f[s.l4 + 12] & 0x0f);
                fix_ip_length(f, s.l3);
            }
            (5, Some(s)) if s.payload.1 > s.payload.0 => {
                // A record length in the payload, at a random place.
                let at = s.payload.0 + r.below(s.payload.1 - s.payload.0);
                if at + 2 <= f.len() {
                    let any = r.u64() as u16;
                    let v = r.pick(&[0u16, 1, 2, 0x4000, 0x4100, any]);
                    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
            (_, Some(s)) => {
                // Random payload bytes appended.
                let n = r.below(1_500);
                f.extend(r.bytes(n));
                if r.chance(70) {
                    fix_ip_length(f, s.l3);
                }
            }
            _ => {}
        }
        if f.len() < 14 {
            f.resize(14, 0);
        }
    }
}

fn fix_ip_length(f: &mut [u8], l3: usize) {
    match f.get(l3).map(|b| b >> 4) {
        Some(4) if l3 + 4 <= f.len() => {
            let n = (f.len() - l3).min(0xffff) as u16;
            f[l3 + 2..l3 + 4].copy_from_slice(&n.to_be_bytes());
        }
        Some(6) if l3 + 40 <= f.len() => {
            let n = (f.len() - l3 - 40).min(0xffff) as u16;
            f[l3 + 4..l3 + 6].copy_from_slice(&n.to_be_bytes());
        }
        _ => {}
    }
}
