//! Crafted TLS sessions that several kernel test binaries play: whole flights of records,
//! so each test states only what it does differently.

use detector_common::tls::{
    content_type::{APPLICATION_DATA, CHANGE_CIPHER_SPEC, HANDSHAKE},
    handshake as hs,
};

use crate::frames::{Conversation, Frame, Hello, handshake, record};

/// A ChangeCipherSpec record.
pub fn ccs() -> Vec<u8> {
    record(CHANGE_CIPHER_SPEC, &[1])
}

/// An encrypted record of `len` bytes of type `t` (contents are noise to the walker).
pub fn sealed(t: u8, len: usize) -> Vec<u8> {
    record(t, &vec![0xa5; len])
}

/// The server's first flight of a full TLS 1.2 handshake in one record:
/// ServerHello, Certificate (1.5 KB), ServerKeyExchange, ServerHelloDone.
fn server_flight_tls12(hello: &Hello) -> Vec<u8> {
    let mut msgs = hello.server_hello();
    msgs.extend(handshake(hs::CERTIFICATE, &vec![0x30; 1500]));
    msgs.extend(handshake(hs::SERVER_KEY_EXCHANGE, &[0x03; 100]));
    msgs.extend(handshake(hs::SERVER_HELLO_DONE, &[]));
    record(HANDSHAKE, &msgs)
}

/// Client key exchange, ChangeCipherSpec and Finished, as three records in one segment.
fn client_finish_tls12() -> Vec<u8> {
    let mut seg = record(HANDSHAKE, &handshake(hs::CLIENT_KEY_EXCHANGE, &[0x04; 66]));
    seg.extend(ccs());
    seg.extend(sealed(HANDSHAKE, 40));
    seg
}

/// A TLS 1.2 session up to application data both ways; returns the frames in order.
pub fn tls12_session(conv: &mut Conversation, client: &Hello, server: &Hello) -> Vec<Frame> {
    let mut f = vec![conv.syn_ack()];
    f.push(conv.client(&record(HANDSHAKE, &client.client_hello())));
    // The server flight spans three segments; record and message headers fall anywhere.
    f.extend(conv.server_segments(&server_flight_tls12(server), &[700, 700]));
    f.push(conv.client(&client_finish_tls12()));
    let mut fin = ccs();
    fin.extend(sealed(HANDSHAKE, 40));
    f.push(conv.server(&fin));
    f.push(conv.client(&sealed(APPLICATION_DATA, 300)));
    f.push(conv.server(&sealed(APPLICATION_DATA, 2000)));
    f
}
