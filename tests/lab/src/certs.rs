//! Certificates: a lab CA (trusted, and one nobody trusts) issuing server certificates with
//! openssl, and the openssl command lines that use them.

use std::{
    ffi::OsString,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, ensure};

use crate::{
    netns::Lab,
    process::host_ok,
    util::{lock, os, sanitize, write_file},
};

/// Common name of the certificate that [`Lab::nginx`] makes when the site brings none.
pub const DEFAULT_CN: &str = "server.test";

/// Kind of key for generated certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyAlg {
    /// EC P-256: fast to generate, the default.
    #[default]
    EcP256,
    /// RSA 2048, for cases that need RSA key exchange or RSA signatures.
    Rsa2048,
}

/// Paths of a generated CA and of a server certificate it signed (all PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Subject CN, also a SAN (DNS, or IP when it parses as one).
    pub cn: String,
    /// The CA certificate, for `curl --cacert` / `openssl s_client -CAfile`.
    pub ca_cert: PathBuf,
    /// The CA key.
    pub ca_key: PathBuf,
    /// The server certificate; its SANs also hold the lab server's IPv4 and IPv6.
    pub cert: PathBuf,
    /// The server key (unencrypted).
    pub key: PathBuf,
}

impl Lab {
    /// A server certificate for `cn` (EC P-256) signed by this lab's CA, with the server's
    /// IPv4 and IPv6 addresses and `cn` as SANs, so clients can verify it whether they
    /// connect by name or by address.
    pub fn tls_cert(&self, cn: &str) -> Result<TlsFiles> {
        self.tls_cert_with(cn, KeyAlg::EcP256)
    }

    /// Like [`Lab::tls_cert`] with a choice of key type.
    pub fn tls_cert_with(&self, cn: &str, alg: KeyAlg) -> Result<TlsFiles> {
        let (ca_cert, ca_key) = self.trusted_ca()?;
        self.issue(cn, alg, ca_cert, ca_key)
    }

    /// A server certificate like [`Lab::tls_cert`]'s (CN [`DEFAULT_CN`]) but from a fresh,
    /// different CA: a client trusting the lab CA rejects it with "unknown CA", which is
    /// how tests provoke that failure.
    pub fn untrusted_cert(&self) -> Result<TlsFiles> {
        let stem = format!("untrusted-ca-{:03}", self.next_seq());
        let (ca_cert, ca_key) = self.make_ca(&stem, &format!("dlab untrusted CA {}", self.tag))?;
        self.issue(DEFAULT_CN, KeyAlg::EcP256, ca_cert, ca_key)
    }

    pub(crate) fn trusted_ca(&self) -> Result<(PathBuf, PathBuf)> {
        let mut ca = lock(&self.ca);
        if let Some(files) = &*ca {
            return Ok(files.clone());
        }
        let files = self.make_ca("ca", &format!("dlab test CA {}", self.tag))?;
        *ca = Some(files.clone());
        Ok(files)
    }

    pub(crate) fn make_ca(&self, stem: &str, cn: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = self.dir.join(format!("{stem}.crt"));
        let key = self.dir.join(format!("{stem}.key"));
        let cnf = self.dir.join(format!("{stem}.cnf"));
        write_file(&cnf, &openssl_config(cn, "DNS:unused.invalid"))?;
        let mut args = vec![os("openssl"), os("req"), os("-x509"), os("-new")];
        args.extend(newkey_args(KeyAlg::EcP256));
        args.extend([
            os("-nodes"),
            os("-keyout"),
            key.clone().into(),
            os("-out"),
            cert.clone().into(),
        ]);
        args.extend([
            os("-days"),
            os("3650"),
            os("-config"),
            cnf.into(),
            os("-extensions"),
            os("v3_ca"),
        ]);
        host_ok(&args)?;
        Ok((cert, key))
    }

    pub(crate) fn issue(
        &self,
        cn: &str,
        alg: KeyAlg,
        ca_cert: PathBuf,
        ca_key: PathBuf,
    ) -> Result<TlsFiles> {
        ensure!(
            !cn.is_empty()
                && cn.len() <= 64
                && cn
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)),
            "certificate CN {cn:?} must be 1-64 characters of [A-Za-z0-9.-_:]"
        );
        let seq = self.next_seq();
        let stem = format!("{seq:03}-{}", sanitize(cn));
        let (cert, key) = (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        );
        let (csr, cnf) = (
            self.dir.join(format!("{stem}.csr")),
            self.dir.join(format!("{stem}.cnf")),
        );
        let mut san = match cn.parse::<IpAddr>() {
            Ok(ip) => format!("IP:{ip}"),
            Err(_) => format!("DNS:{cn}"),
        };
        for ip in self.server_addrs() {
            if ip.to_string() != cn {
                write!(san, ", IP:{ip}").expect("writing to a String cannot fail");
            }
        }
        write_file(&cnf, &openssl_config(cn, &san))?;
        let mut req = vec![os("openssl"), os("req"), os("-new")];
        req.extend(newkey_args(alg));
        req.extend([
            os("-nodes"),
            os("-keyout"),
            key.clone().into(),
            os("-out"),
            csr.clone().into(),
        ]);
        req.extend([os("-config"), cnf.clone().into()]);
        host_ok(&req)?;
        // Unique serials, so that clients never see two certificates with the same
        // issuer and serial (some cache by that pair).
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let serial = format!("0x{:x}{seq:04x}", nanos & 0xffff_ffff_ffff);
        let sign = [
            os("openssl"),
            os("x509"),
            os("-req"),
            os("-in"),
            csr.into(),
            os("-CA"),
            ca_cert.clone().into(),
            os("-CAkey"),
            ca_key.clone().into(),
            os("-set_serial"),
            os(&serial),
            os("-days"),
            os("825"),
            os("-out"),
            cert.clone().into(),
            os("-extfile"),
            cnf.into(),
            os("-extensions"),
            os("v3_server"),
        ];
        host_ok(&sign)?;
        Ok(TlsFiles {
            cn: cn.to_owned(),
            ca_cert,
            ca_key,
            cert,
            key,
        })
    }
}

pub(crate) fn openssl_config(cn: &str, san: &str) -> String {
    format!(
        "# Generated by tests/lab/src/certs.rs; self-contained so the system openssl.cnf does not matter.\n\
         [req]\ndistinguished_name = dn\nprompt = no\n\
         [dn]\nCN = {cn}\n\
         [v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [v3_server]\nbasicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n\
         subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid, issuer\nsubjectAltName = {san}\n"
    )
}

pub(crate) fn newkey_args(alg: KeyAlg) -> Vec<OsString> {
    match alg {
        KeyAlg::EcP256 => vec![
            os("-newkey"),
            os("ec"),
            os("-pkeyopt"),
            os("ec_paramgen_curve:P-256"),
        ],
        KeyAlg::Rsa2048 => vec![os("-newkey"), os("rsa:2048")],
    }
}

/// A path as the `&str` a command line wants; captures and certificates live under the
/// lab's own (UTF-8) temp dir.
pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// `s_server` arguments for a certificate.
pub fn cert_args(files: &TlsFiles) -> Result<Vec<String>> {
    Ok(vec![
        "-cert".into(),
        path_str(&files.cert)?.into(),
        "-key".into(),
        path_str(&files.key)?.into(),
    ])
}

/// `openssl s_client -connect ADDR -servername server.test -CAfile CA EXTRA...`.
pub fn s_client_args(connect: SocketAddr, ca: &Path, extra: &[&str]) -> Result<Vec<String>> {
    let mut args: Vec<String> = [
        "openssl",
        "s_client",
        "-connect",
        &connect.to_string(),
        "-servername",
        DEFAULT_CN,
        "-CAfile",
        path_str(ca)?,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Ok(args)
}
