//! `--web.config.file`: TLS and basic auth for the HTTP endpoint, read from the web
//! configuration file that node_exporter and the other Prometheus exporters share
//! (`tls_server_config`, `basic_auth_users` with bcrypt hashes), so operators reuse the
//! file they already have.
//!
//! Read once at startup, before privileges are dropped (the key file is usually readable
//! by root only); a changed file takes effect at the next start. Parts of the format this
//! agent cannot honour are refused by name rather than ignored, so a file never promises
//! more protection than the endpoint gives.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, anyhow, bail, ensure};
use base64::Engine as _;
use rustls::{
    RootCertStore, ServerConfig, SupportedProtocolVersion,
    crypto::ring,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    version::{TLS12, TLS13},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde::Deserialize;

/// The file as exporter-toolkit defines it. Its other top-level keys (`http_server_config`,
/// `rate_limit`) are unknown here and so refused by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

/// `tls_server_config`. Keys exporter-toolkit knows but this agent does not honour are
/// listed so that their presence gets an error saying so, not "unknown field".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
    cert: Option<serde_yaml::Value>,
    key: Option<serde_yaml::Value>,
    client_ca: Option<serde_yaml::Value>,
    cipher_suites: Option<serde_yaml::Value>,
    curve_preferences: Option<serde_yaml::Value>,
    prefer_server_cipher_suites: Option<serde_yaml::Value>,
    client_allowed_sans: Option<serde_yaml::Value>,
}

/// What the endpoint enforces; by default, nothing (plain HTTP, no auth).
#[derive(Default)]
pub struct WebConfig {
    /// Serve HTTPS with this configuration; plain HTTP when absent.
    pub tls: Option<Arc<ServerConfig>>,
    /// Require basic auth from these users on every path; no auth when absent.
    pub users: Option<BasicAuth>,
}

impl WebConfig {
    /// Reads and checks `path`; relative certificate paths are relative to its directory,
    /// as in exporter-toolkit.
    pub fn load(path: &Path) -> anyhow::Result<WebConfig> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading web config {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).with_context(|| format!("web config {}", path.display()))
    }

    fn parse(text: &str, dir: &Path) -> anyhow::Result<WebConfig> {
        // An empty file is a valid configuration that asks for nothing.
        let file: File = if text.trim().is_empty() {
            File {
                tls_server_config: None,
                basic_auth_users: None,
            }
        } else {
            serde_yaml::from_str(text)?
        };
        let tls = file
            .tls_server_config
            .map(|t| tls_config(t, dir).context("tls_server_config"))
            .transpose()?;
        let users = file
            .basic_auth_users
            .map(|u| BasicAuth::new(u).context("basic_auth_users"))
            .transpose()?;
        Ok(WebConfig { tls, users })
    }
}

fn tls_config(t: TlsFile, dir: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let unsupported = [
        ("cert", t.cert.is_some(), "use cert_file"),
        ("key", t.key.is_some(), "use key_file"),
        ("client_ca", t.client_ca.is_some(), "use client_ca_file"),
        (
            "cipher_suites",
            t.cipher_suites.is_some(),
            "rustls's default suites are used",
        ),
        (
            "curve_preferences",
            t.curve_preferences.is_some(),
            "rustls's default groups are used",
        ),
        (
            "prefer_server_cipher_suites",
            t.prefer_server_cipher_suites.is_some(),
            "the server's order is always preferred",
        ),
        (
            "client_allowed_sans",
            t.client_allowed_sans.is_some(),
            "any client certificate the client_ca_file signed is accepted",
        ),
    ];
    if let Some((key, _, instead)) = unsupported.iter().find(|(_, present, _)| *present) {
        bail!("{key} is not supported by this agent ({instead}): remove it");
    }
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
    let cert_file = resolve(t.cert_file.context("cert_file is required")?);
    let key_file = resolve(t.key_file.context("key_file is required")?);
    let certs = read_pem(&cert_file, "cert_file", |pem| {
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()
    })?;
    ensure!(
        !certs.is_empty(),
        "cert_file {}: no CERTIFICATE in it",
        cert_file.display()
    );
    let key = read_pem(&key_file, "key_file", PrivateKeyDer::from_pem_slice)?;

    let min = version(t.min_version.as_deref().unwrap_or("TLS12"), "min_version")?;
    let max = version(t.max_version.as_deref().unwrap_or("TLS13"), "max_version")?;
    ensure!(min <= max, "min_version is above max_version");
    let versions: Vec<&'static SupportedProtocolVersion> = [(12, &TLS12), (13, &TLS13)]
        .into_iter()
        .filter(|(v, _)| (min..=max).contains(v))
        .map(|(_, p)| p)
        .collect();

    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .context("TLS versions")?;
    let client_ca = t.client_ca_file.map(resolve);
    let auth_type = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match auth_type {
        "NoClientCert" => {
            ensure!(
                client_ca.is_none(),
                "client_ca_file is set but client_auth_type is NoClientCert: set \
                 client_auth_type to RequireAndVerifyClientCert or VerifyClientCertIfGiven, \
                 or remove client_ca_file"
            );
            builder.with_no_client_auth()
        }
        "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {
            let ca = client_ca
                .with_context(|| format!("client_auth_type {auth_type} needs client_ca_file"))?;
            builder.with_client_cert_verifier(client_verifier(
                &ca,
                auth_type == "VerifyClientCertIfGiven",
                provider,
            )?)
        }
        "RequestClientCert" | "RequireAnyClientCert" => bail!(
            "client_auth_type {auth_type} is not supported by this agent (it accepts client \
             certificates nobody verified): use RequireAndVerifyClientCert with client_ca_file"
        ),
        other => bail!(
            "client_auth_type {other:?} is not one of NoClientCert, RequireAndVerifyClientCert, \
             VerifyClientCertIfGiven"
        ),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .with_context(|| format!("{} and {}", cert_file.display(), key_file.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn client_verifier(
    ca: &Path,
    optional: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let certs = read_pem(ca, "client_ca_file", |pem| {
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()
    })?;
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .with_context(|| format!("client_ca_file {}", ca.display()))?;
    }
    ensure!(
        !roots.is_empty(),
        "client_ca_file {}: no CERTIFICATE in it",
        ca.display()
    );
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if optional {
        builder = builder.allow_unauthenticated();
    }
    builder
        .build()
        .with_context(|| format!("client_ca_file {}", ca.display()))
}

/// Reads a PEM file, naming the key and the path in any error.
fn read_pem<T>(
    path: &Path,
    key: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, rustls_pki_types::pem::Error>,
) -> anyhow::Result<T> {
    let bytes = fs::read(path).with_context(|| format!("{key} {}", path.display()))?;
    parse(&bytes).map_err(|e| anyhow!("{key} {}: {e}", path.display()))
}

/// A `min_version`/`max_version` value as a minor version number of TLS 1.
fn version(name: &str, key: &str) -> anyhow::Result<u8> {
    match name {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => {
            bail!("{key} {name} is not supported: this agent speaks TLS 1.2 and 1.3 only")
        }
        other => bail!("{key} {other:?} is not one of TLS12, TLS13"),
    }
}

/// `basic_auth_users`: user names and the bcrypt hashes of their passwords.
pub struct BasicAuth {
    users: Vec<(String, String)>,
}

/// A well-formed bcrypt hash of nothing anyone sends, checked against when the user is
/// unknown so that a wrong name costs as long as a wrong password.
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> anyhow::Result<BasicAuth> {
        for (user, hash) in &users {
            ensure!(!user.contains(':'), "user name {user:?} contains ':'");
            hash.parse::<bcrypt::HashParts>()
                .map_err(|e| anyhow!("user {user:?}: not a bcrypt hash ({e})"))?;
        }
        Ok(BasicAuth {
            users: users.into_iter().collect(),
        })
    }

    /// Whether an `Authorization` header value names a user with the right password.
    /// Costs one bcrypt verification (tens of milliseconds): run it off the event loop.
    pub fn check(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(decode) else {
            return false;
        };
        // Every name is compared, in constant time, so timing does not tell which exist.
        let mut found = None;
        for (name, hash) in &self.users {
            if constant_time_eq(name.as_bytes(), user.as_bytes()) {
                found = Some(hash.as_str());
            }
        }
        let ok = bcrypt::verify(&password, found.unwrap_or(DUMMY_HASH)).unwrap_or(false);
        ok && found.is_some()
    }
}

/// `Basic base64(user:password)` as user and password.
fn decode(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (user, password) = raw.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory for one test, removed at the end.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("detector-webcfg-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            fs::write(&p, text).unwrap();
            p
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed EC certificate and key, made with openssl, in `dir`.
    fn cert_pair(dir: &Scratch) {
        let status = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-keyout",
            ])
            .arg(dir.0.join("server.key"))
            .arg("-out")
            .arg(dir.0.join("server.crt"))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("running openssl");
        assert!(status.success());
    }

    fn err(dir: &Scratch, text: &str) -> String {
        let path = dir.write("web.yml", text);
        format!("{:#}", WebConfig::load(&path).err().expect("refused"))
    }

    #[test]
    fn good_file_gives_tls_and_users() {
        let dir = Scratch::new("good");
        cert_pair(&dir);
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let path = dir.write(
            "web.yml",
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: {}\n  \
                 client_auth_type: NoClientCert\n  min_version: TLS13\n\
                 basic_auth_users:\n  prom: {hash}\n",
                dir.0.join("server.key").display()
            ),
        );
        let web = WebConfig::load(&path).unwrap();
        let tls = web.tls.expect("TLS configured");
        assert_eq!(tls.alpn_protocols, [b"http/1.1".to_vec()]);
        let users = web.users.expect("users configured");
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(users.check(Some(basic("prom:s3cret").as_bytes())));
        assert!(!users.check(Some(basic("prom:wrong").as_bytes())));
        assert!(!users.check(Some(basic("other:s3cret").as_bytes())));
        assert!(!users.check(Some(b"Bearer abc")));
        assert!(!users.check(None));
    }

    #[test]
    fn empty_file_asks_for_nothing() {
        let dir = Scratch::new("empty");
        let web = WebConfig::load(&dir.write("web.yml", "")).unwrap();
        assert!(web.tls.is_none() && web.users.is_none());
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = Scratch::new("unknown");
        let e = err(&dir, "tls_server_config:\n  cert_fil: x\n");
        assert!(e.contains("unknown field `cert_fil`"), "{e}");
        let e = err(&dir, "http_server_config:\n  http2: false\n");
        assert!(e.contains("unknown field `http_server_config`"), "{e}");
    }

    #[test]
    fn bad_hash_names_the_user() {
        let dir = Scratch::new("hash");
        let e = err(&dir, "basic_auth_users:\n  prom: plaintext\n");
        assert!(
            e.contains("basic_auth_users") && e.contains("\"prom\": not a bcrypt hash"),
            "{e}"
        );
    }

    #[test]
    fn missing_cert_file_names_the_path() {
        let dir = Scratch::new("missing");
        let e = err(
            &dir,
            "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: nowhere.key\n",
        );
        let want = dir.0.join("nowhere.crt");
        assert!(
            e.contains(&format!("cert_file {}", want.display())) && e.contains("No such file"),
            "{e}"
        );
        let e = err(&dir, "tls_server_config:\n  key_file: k\n");
        assert!(e.contains("cert_file is required"), "{e}");
    }

    #[test]
    fn unsupported_settings_are_refused_by_name() {
        let dir = Scratch::new("unsupported");
        cert_pair(&dir);
        let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
        for (extra, want) in [
            (
                "  min_version: TLS11\n",
                "min_version TLS11 is not supported",
            ),
            (
                "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
                "cipher_suites is not supported",
            ),
            (
                "  client_auth_type: RequireAnyClientCert\n",
                "RequireAnyClientCert is not supported",
            ),
            (
                "  client_auth_type: RequireAndVerifyClientCert\n",
                "needs client_ca_file",
            ),
            (
                "  client_ca_file: server.crt\n",
                "client_auth_type is NoClientCert",
            ),
            (
                "  min_version: TLS13\n  max_version: TLS12\n",
                "above max_version",
            ),
        ] {
            let e = err(&dir, &format!("{tls}{extra}"));
            assert!(e.contains(want), "{extra}: {e}");
        }
        // Client certificates verified against a CA do build.
        let path = dir.write(
            "ok.yml",
            &format!(
                "{tls}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: server.crt\n"
            ),
        );
        assert!(WebConfig::load(&path).unwrap().tls.is_some());
    }

    #[test]
    fn authorization_decoding() {
        assert_eq!(
            decode(b"basic dTpwOnE="),
            Some(("u".into(), "p:q".into())),
            "the password may hold ':'"
        );
        assert_eq!(decode(b"Basic !!"), None);
        assert_eq!(decode(b"Basic dXNlcg=="), None, "no ':'");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        // An unknown user costs a whole verification only if the stand-in hash is valid.
        assert_eq!(bcrypt::verify("x", DUMMY_HASH).ok(), Some(false));
    }
}
