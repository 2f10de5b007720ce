//! The TLS wire vocabulary: the numbers of RFC 5246 (TLS 1.2), RFC 8446 (TLS 1.3) and the
//! IANA TLS registries that the kernel reads, the agent names and the tests craft. Only
//! the numbers the detector uses are here; everything else on the wire is "unknown".

/// Record content types (the first byte of a record header).
pub mod content_type {
    pub const CHANGE_CIPHER_SPEC: u8 = 20;
    pub const ALERT: u8 = 21;
    pub const HANDSHAKE: u8 = 22;
    pub const APPLICATION_DATA: u8 = 23;
    pub const HEARTBEAT: u8 = 24;

    /// The letter Zeek's `ssl_history` gives a record of this type (upper case; the
    /// server's are written in lower case). Handshake records have none: their messages
    /// do (see [`super::handshake::history_letter`]). Unknown types are `Q`.
    pub const fn history_letter(typ: u8) -> u8 {
        match typ {
            CHANGE_CIPHER_SPEC => b'I',
            ALERT => b'L',
            APPLICATION_DATA => b'D',
            HEARTBEAT => b'B',
            _ => b'Q',
        }
    }
}

/// Handshake message types (the first byte of a handshake message).
pub mod handshake {
    pub const HELLO_REQUEST: u8 = 0;
    pub const CLIENT_HELLO: u8 = 1;
    pub const SERVER_HELLO: u8 = 2;
    pub const HELLO_VERIFY_REQUEST: u8 = 3;
    pub const NEW_SESSION_TICKET: u8 = 4;
    pub const ENCRYPTED_EXTENSIONS: u8 = 8;
    pub const CERTIFICATE: u8 = 11;
    pub const SERVER_KEY_EXCHANGE: u8 = 12;
    pub const CERTIFICATE_REQUEST: u8 = 13;
    pub const SERVER_HELLO_DONE: u8 = 14;
    pub const CERTIFICATE_VERIFY: u8 = 15;
    pub const CLIENT_KEY_EXCHANGE: u8 = 16;
    pub const FINISHED: u8 = 20;
    pub const KEY_UPDATE: u8 = 24;

    /// The letter Zeek's `ssl_history` gives a plaintext handshake message (upper case;
    /// the server's are written in lower case). Unknown types are `Q`.
    pub const fn history_letter(typ: u8) -> u8 {
        match typ {
            HELLO_REQUEST => b'H',
            CLIENT_HELLO => b'C',
            SERVER_HELLO => b'S',
            HELLO_VERIFY_REQUEST => b'V',
            NEW_SESSION_TICKET => b'T',
            ENCRYPTED_EXTENSIONS => b'O',
            CERTIFICATE => b'X',
            SERVER_KEY_EXCHANGE => b'K',
            CERTIFICATE_REQUEST => b'R',
            SERVER_HELLO_DONE => b'N',
            CERTIFICATE_VERIFY => b'Y',
            CLIENT_KEY_EXCHANGE => b'G',
            FINISHED => b'F',
            KEY_UPDATE => b'P',
            _ => b'Q',
        }
    }
}

/// Hello extension numbers.
pub mod extension {
    pub const SERVER_NAME: u16 = 0;
    pub const SESSION_TICKET: u16 = 35;
    pub const PRE_SHARED_KEY: u16 = 41;
    pub const EARLY_DATA: u16 = 42;
    pub const SUPPORTED_VERSIONS: u16 = 43;
    pub const PSK_KEY_EXCHANGE_MODES: u16 = 45;
    pub const RENEGOTIATION_INFO: u16 = 0xff01;

    /// `server_name` list entry type for a DNS host name.
    pub const SERVER_NAME_HOST: u8 = 0;
}

/// Alert levels and descriptions.
pub mod alert {
    pub const WARNING: u8 = 1;
    pub const FATAL: u8 = 2;

    pub const CLOSE_NOTIFY: u8 = 0;
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const BAD_RECORD_MAC: u8 = 20;
    pub const HANDSHAKE_FAILURE: u8 = 40;
    pub const UNKNOWN_CA: u8 = 48;
    pub const DECRYPT_ERROR: u8 = 51;
    pub const PROTOCOL_VERSION: u8 = 70;
    pub const INTERNAL_ERROR: u8 = 80;
    pub const NO_RENEGOTIATION: u8 = 100;
    pub const UNRECOGNIZED_NAME: u8 = 112;

    pub const fn level_name(level: u8) -> &'static str {
        match level {
            WARNING => "warning",
            FATAL => "fatal",
            _ => "unknown",
        }
    }

    /// The registry's name of an alert description; unknown codes are "unknown", so that
    /// metric labels built from it stay a closed set.
    pub const fn description_name(code: u8) -> &'static str {
        match code {
            CLOSE_NOTIFY => "close_notify",
            UNEXPECTED_MESSAGE => "unexpected_message",
            BAD_RECORD_MAC => "bad_record_mac",
            21 => "decryption_failed",
            22 => "record_overflow",
            30 => "decompression_failure",
            HANDSHAKE_FAILURE => "handshake_failure",
            41 => "no_certificate",
            42 => "bad_certificate",
            43 => "unsupported_certificate",
            44 => "certificate_revoked",
            45 => "certificate_expired",
            46 => "certificate_unknown",
            47 => "illegal_parameter",
            UNKNOWN_CA => "unknown_ca",
            49 => "access_denied",
            50 => "decode_error",
            DECRYPT_ERROR => "decrypt_error",
            60 => "export_restriction",
            PROTOCOL_VERSION => "protocol_version",
            71 => "insufficient_security",
            INTERNAL_ERROR => "internal_error",
            86 => "inappropriate_fallback",
            90 => "user_canceled",
            NO_RENEGOTIATION => "no_renegotiation",
            109 => "missing_extension",
            110 => "unsupported_extension",
            111 => "certificate_unobtainable",
            UNRECOGNIZED_NAME => "unrecognized_name",
            113 => "bad_certificate_status_response",
            114 => "bad_certificate_hash_value",
            115 => "unknown_psk_identity",
            116 => "certificate_required",
            120 => "no_application_protocol",
            _ => "unknown",
        }
    }
}

/// Protocol version codes (record headers, hellos, `supported_versions`).
pub mod version {
    /// Every record header's major version.
    pub const MAJOR: u8 = 3;
    pub const SSL3_0: u16 = 0x0300;
    pub const TLS1_0: u16 = 0x0301;
    pub const TLS1_1: u16 = 0x0302;
    pub const TLS1_2: u16 = 0x0303;
    pub const TLS1_3: u16 = 0x0304;

    /// TLS 1.3 or one of its drafts (`0x7f00` + draft number, used by browsers in
    /// 2016-2018): records after the handshake are all application data, and there is no
    /// renegotiation.
    pub const fn is_tls13_family(v: u16) -> bool {
        v == TLS1_3 || v >> 8 == 0x7f
    }

    /// RFC 8701 GREASE values (`0x0a0a`, `0x1a1a`, ... `0xfafa`): placeholders that mean
    /// nothing, so never a negotiated version.
    pub const fn is_grease(v: u16) -> bool {
        v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
    }

    /// The version's bit in an offered-versions set (bit n = `0x0300 + n`, SSL 3.0 to
    /// TLS 1.3); 0 for any other code.
    pub const fn offered_bit(v: u16) -> u8 {
        if v >> 8 == MAJOR as u16 && (v & 0xff) <= 4 {
            1 << (v & 0xff)
        } else {
            0
        }
    }

    /// A known version's name (`TLS1.2`); `None` for codes the detector does not know.
    pub const fn name(v: u16) -> Option<&'static str> {
        match v {
            SSL3_0 => Some("SSL3.0"),
            TLS1_0 => Some("TLS1.0"),
            TLS1_1 => Some("TLS1.1"),
            TLS1_2 => Some("TLS1.2"),
            TLS1_3 => Some("TLS1.3"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version::is_tls13_family(0x0304) && version::is_tls13_family(0x7f17));
        assert!(!version::is_tls13_family(0x0303));
        assert!(version::is_grease(0x0a0a) && version::is_grease(0xfafa));
        assert!(!version::is_grease(0x0a1a) && !version::is_grease(0x0303));
        assert_eq!(version::name(0x0303), Some("TLS1.2"));
        assert_eq!(version::name(0x7f17), None);
        assert_eq!(version::offered_bit(version::TLS1_3), 1 << 4);
        assert_eq!(version::offered_bit(0x7f17), 0);
    }

    #[test]
    fn names() {
        assert_eq!(
            alert::description_name(alert::DECRYPT_ERROR),
            "decrypt_error"
        );
        assert_eq!(alert::description_name(255), "unknown");
        assert_eq!(alert::level_name(alert::FATAL), "fatal");
        assert_eq!(handshake::history_letter(handshake::FINISHED), b'F');
        assert_eq!(handshake::history_letter(99), b'Q');
        assert_eq!(content_type::history_letter(content_type::ALERT), b'L');
    }
}
