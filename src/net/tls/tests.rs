//! TLS unit tests: certificates made with rcgen in a temporary directory, handshakes run in
//! memory between a rustls client and server.

use std::ffi::OsString;
use std::io::{Read as _, Write as _};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use rustls::{ClientConnection, ServerConnection};

use super::*;
use crate::config::{parse_command, Command};

/// A test PKI: a CA, a server certificate for localhost, and client certificates.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "test ca");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Writes `<name>.crt` and `<name>.key`, signed by the CA, valid for server and client
    /// auth; returns the serial.
    fn issue(&self, name: &str, cn: Option<&str>, sans: &[&str], serial: u8) -> SerialNumber {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.distinguished_name.push(DnType::OrganizationName, "etcd");
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let sn = SerialNumber::from_slice(&[0x10, serial]);
        p.serial_number = Some(sn.clone());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        sn
    }

    /// Writes `<name>` as a CRL revoking `serials`, PEM or DER.
    fn crl(&self, name: &str, serials: &[SerialNumber], pem: bool) {
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            // Expired, like the fixture etcd's e2e tests use: the next-update time is ignored.
            this_update: now - time::Duration::days(30),
            next_update: now - time::Duration::days(20),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: s.clone(),
                    revocation_time: now - time::Duration::days(30),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca, &self.ca_key).unwrap();
        if pem {
            std::fs::write(self.path(name), crl.pem().unwrap()).unwrap();
        } else {
            std::fs::write(self.path(name), crl.der().as_ref()).unwrap();
        }
    }

    /// Server TLS info with this PKI's server certificate and CA.
    fn server_info(&self) -> TlsInfo {
        TlsInfo {
            cert_file: self.path("server.crt"),
            key_file: self.path("server.key"),
            trusted_ca_file: self.path("ca.crt"),
            ..TlsInfo::default()
        }
    }

    /// A client that trusts the CA and presents `<name>.crt` (or nothing).
    fn client(&self, name: Option<&str>, opts: &TlsOptions) -> Arc<ClientConfig> {
        let info = TlsInfo {
            trusted_ca_file: self.path("ca.crt"),
            cert_file: name
                .map(|n| self.path(&format!("{n}.crt")))
                .unwrap_or_default(),
            key_file: name
                .map(|n| self.path(&format!("{n}.key")))
                .unwrap_or_default(),
            ..TlsInfo::default()
        };
        client_config(&info, opts).unwrap()
    }
}

fn default_opts() -> TlsOptions {
    TlsOptions {
        cipher_suites: vec![],
        min_version: "TLS1.2".into(),
        max_version: String::new(),
    }
}

/// Runs a handshake in memory and one application-data round trip; returns the server side.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(client, name)?;
    let mut s = ServerConnection::new(server)?;
    c.writer().write_all(b"ping").unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let mut r = &buf[..];
            while !r.is_empty() {
                s.read_tls(&mut r).unwrap();
            }
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let mut r = &buf[..];
            while !r.is_empty() {
                c.read_tls(&mut r).unwrap();
            }
            c.process_new_packets()?;
        }
        let mut chunk = [0u8; 16];
        if let Ok(n) = s.reader().read(&mut chunk) {
            got.extend_from_slice(&chunk[..n]);
        }
        if got == b"ping" && !c.is_handshaking() && !s.is_handshaking() {
            return Ok((c, s));
        }
    }
    panic!("handshake did not finish");
}

fn setup() -> Pki {
    let pki = Pki::new();
    pki.issue(
        "server",
        Some("example.com"),
        &["localhost", "127.0.0.1"],
        1,
    );
    pki
}

#[test]
fn server_auth_and_client_certificate_required_with_a_ca() {
    let pki = setup();
    pki.issue("client", Some("alice"), &["localhost"], 2);
    let opts = default_opts();
    let server = server_config(&pki.server_info(), &opts).unwrap();

    let (_, s) = handshake(pki.client(Some("client"), &opts), server.clone()).unwrap();
    assert_eq!(peer_common_name(&s), Some(PeerCommonName("alice".into())));
    // Like Go's RequireAndVerifyClientCert: a trusted CA file makes client certs mandatory.
    let err = handshake(pki.client(None, &opts), server).unwrap_err();
    assert!(
        matches!(err, rustls::Error::NoCertificatesPresented),
        "{err:?}"
    );
}

#[test]
fn no_client_auth_without_ca_or_flag() {
    let pki = setup();
    let opts = default_opts();
    let info = TlsInfo {
        trusted_ca_file: String::new(),
        ..pki.server_info()
    };
    let server = server_config(&info, &opts).unwrap();
    let (_, s) = handshake(pki.client(None, &opts), server).unwrap();
    assert_eq!(peer_common_name(&s), None);
}

#[test]
fn certificate_without_cn_gives_no_common_name() {
    let pki = setup();
    pki.issue("nocn", None, &["localhost"], 3);
    let opts = default_opts();
    let server = server_config(&pki.server_info(), &opts).unwrap();
    let (_, s) = handshake(pki.client(Some("nocn"), &opts), server).unwrap();
    assert_eq!(peer_common_name(&s), None);
}

#[test]
fn revoked_client_certificate_fails_the_handshake() {
    for pem in [false, true] {
        let pki = setup();
        pki.issue("good", Some("good"), &["localhost"], 4);
        let revoked = pki.issue("revoked", Some("revoked"), &["localhost"], 5);
        pki.crl("revoke.crl", &[revoked], pem);
        let opts = default_opts();
        let info = TlsInfo {
            client_cert_auth: true,
            crl_file: pki.path("revoke.crl"),
            ..pki.server_info()
        };
        let server = server_config(&info, &opts).unwrap();
        let err = handshake(pki.client(Some("revoked"), &opts), server.clone()).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
            ),
            "pem={pem}: {err:?}"
        );
        handshake(pki.client(Some("good"), &opts), server.clone()).unwrap();

        // The CRL is re-read when it changes: an empty one lets the certificate in.
        std::thread::sleep(Duration::from_millis(20));
        pki.crl("revoke.crl", &[], pem);
        handshake(pki.client(Some("revoked"), &opts), server).unwrap();
    }
}

#[test]
fn bad_crl_file_fails_at_start() {
    let pki = setup();
    std::fs::write(pki.path("bad.crl"), b"not a crl").unwrap();
    let info = TlsInfo {
        client_cert_auth: true,
        crl_file: pki.path("bad.crl"),
        ..pki.server_info()
    };
    assert!(server_config(&info, &default_opts()).is_err());
    let info = TlsInfo {
        client_cert_auth: true,
        crl_file: pki.path("missing.crl"),
        ..pki.server_info()
    };
    assert!(server_config(&info, &default_opts()).is_err());
}

#[test]
fn allowed_cn_and_hostname() {
    let pki = setup();
    pki.issue("alice", Some("alice"), &["alice.example.com"], 6);
    pki.issue("bob", Some("bob"), &["10.0.0.7"], 7);
    let opts = default_opts();

    let info = TlsInfo {
        allowed_cn: vec!["alice".into()],
        ..pki.server_info()
    };
    let server = server_config(&info, &opts).unwrap();
    handshake(pki.client(Some("alice"), &opts), server.clone()).unwrap();
    assert!(handshake(pki.client(Some("bob"), &opts), server).is_err());

    let info = TlsInfo {
        allowed_hostname: vec!["10.0.0.7".into()],
        ..pki.server_info()
    };
    let server = server_config(&info, &opts).unwrap();
    handshake(pki.client(Some("bob"), &opts), server.clone()).unwrap();
    assert!(handshake(pki.client(Some("alice"), &opts), server).is_err());

    let info = TlsInfo {
        allowed_cn: vec!["alice".into()],
        allowed_hostname: vec!["x".into()],
        ..pki.server_info()
    };
    let err = server_config(&info, &opts).unwrap_err().to_string();
    assert!(err.contains("mutually exclusive"), "{err}");
}

#[test]
fn missing_or_mismatched_files_fail_at_start() {
    let pki = setup();
    pki.issue("other", Some("other"), &["localhost"], 8);
    let opts = default_opts();
    let info = TlsInfo {
        cert_file: pki.path("nope.crt"),
        ..pki.server_info()
    };
    assert!(server_config(&info, &opts).is_err());
    let info = TlsInfo {
        key_file: pki.path("other.key"),
        ..pki.server_info()
    };
    let err = format!("{:#}", server_config(&info, &opts).unwrap_err());
    assert!(err.contains("cannot use certificate"), "{err}");
    let info = TlsInfo {
        client_cert_file: pki.path("other.crt"),
        ..pki.server_info()
    };
    let err = server_config(&info, &opts).unwrap_err().to_string();
    assert!(err.contains("ClientKeyFile and ClientCertFile"), "{err}");
}

#[test]
fn cipher_suites_and_versions() {
    let pki = setup();
    pki.issue("client", Some("c"), &[], 9);
    let only12 = TlsOptions {
        cipher_suites: vec![],
        min_version: "TLS1.2".into(),
        max_version: "TLS1.2".into(),
    };
    let aes128 = TlsOptions {
        cipher_suites: vec![
            // Go knows it, rustls does not: skipped with a warning.
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA".into(),
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
        ],
        ..only12.clone()
    };
    let server = server_config(&pki.server_info(), &aes128).unwrap();
    let (c, _) = handshake(pki.client(Some("client"), &default_opts()), server.clone()).unwrap();
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(
        c.negotiated_cipher_suite().unwrap().suite(),
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );
    // A client offering only other TLS 1.2 suites cannot connect.
    let chacha = TlsOptions {
        cipher_suites: vec!["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305".into()],
        ..only12.clone()
    };
    assert!(handshake(pki.client(Some("client"), &chacha), server).is_err());

    // Only unsupported TLS 1.2 names with TLS 1.2 only: a start-up error.
    let cbc = TlsOptions {
        cipher_suites: vec!["TLS_RSA_WITH_AES_128_CBC_SHA".into()],
        ..only12.clone()
    };
    let err = server_config(&pki.server_info(), &cbc)
        .unwrap_err()
        .to_string();
    assert!(err.contains("none of the TLS 1.2 cipher suites"), "{err}");
    // With TLS 1.3 allowed, the same list leaves TLS 1.3 only.
    let cbc13 = TlsOptions {
        max_version: String::new(),
        ..cbc
    };
    let server = server_config(&pki.server_info(), &cbc13).unwrap();
    let (c, _) = handshake(pki.client(Some("client"), &default_opts()), server.clone()).unwrap();
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert!(handshake(pki.client(Some("client"), &only12), server).is_err());

    // --tls-min-version TLS1.3 refuses TLS 1.2 clients.
    let min13 = TlsOptions {
        min_version: "TLS1.3".into(),
        ..default_opts()
    };
    let server = server_config(&pki.server_info(), &min13).unwrap();
    assert!(handshake(pki.client(Some("client"), &only12), server.clone()).is_err());
    let (c, _) = handshake(pki.client(Some("client"), &default_opts()), server).unwrap();
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
}

#[test]
fn go_suite_names_map_to_ring_suites() {
    let p = provider();
    for (name, id) in GO_SUITES {
        assert!(
            p.cipher_suites.iter().any(|s| s.suite() == *id),
            "{name} has no rustls suite"
        );
    }
    // Every name we map is one the config parser accepts.
    for (name, _) in GO_SUITES {
        let cfg = serve_cfg(&["--cipher-suites", name]);
        assert_eq!(cfg.cipher_suites, vec![name.to_string()]);
    }
}

#[test]
fn self_cert_is_generated_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("fixtures").join("client");
    let hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "localhost".into(),
    ];
    let info = self_cert(&d, &hosts, 1).unwrap();
    assert!(info.self_cert);
    assert_eq!(info.cert_file, d.join("cert.pem").display().to_string());
    assert_eq!(info.key_file, d.join("key.pem").display().to_string());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&info.key_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let pem = std::fs::read(&info.cert_file).unwrap();
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    assert!(cert_matches_host(&der, "localhost"));
    assert!(cert_matches_host(&der, "127.0.0.1"));
    assert!(!cert_matches_host(&der, "example.com"));

    // Reused on the next start.
    let again = self_cert(&d, &hosts, 1).unwrap();
    assert_eq!(again, info);
    assert_eq!(std::fs::read(&info.cert_file).unwrap(), pem);

    // An unusable pair (e.g. etcd's P-521 key, which ring cannot sign with) is replaced.
    std::fs::write(&info.key_file, b"garbage").unwrap();
    self_cert(&d, &hosts, 1).unwrap();
    assert_ne!(std::fs::read(&info.cert_file).unwrap(), pem);

    assert!(self_cert(&d, &hosts, 0).is_err());
}

fn serve_cfg(extra: &[&str]) -> Config {
    let args: Vec<OsString> = std::iter::once("etcd")
        .chain(extra.iter().copied())
        .map(OsString::from)
        .collect();
    match parse_command(&args, &[]) {
        Ok(Command::Serve(c)) => *c,
        Ok(_) => panic!("not a serve command"),
        Err(e) => panic!("{extra:?}: {e:?}"),
    }
}

#[test]
fn peer_auto_tls_configs_talk_to_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("m1.etcd");
    let data = data.to_str().unwrap();
    let cfg = serve_cfg(&[
        "--name",
        "m1",
        "--data-dir",
        data,
        "--peer-auto-tls",
        "--listen-peer-urls",
        "https://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "https://127.0.0.1:2380",
        "--initial-cluster",
        "m1=https://127.0.0.1:2380",
    ]);
    let server = peer_server_config(&cfg).unwrap().expect("peer TLS");
    let client = peer_client_config(&cfg).unwrap().expect("peer TLS");
    assert!(std::path::Path::new(data)
        .join("fixtures/peer/cert.pem")
        .exists());
    assert!(std::path::Path::new(data)
        .join("fixtures/peer/key.pem")
        .exists());
    // The auto certificate names 127.0.0.1, not "localhost"; the client skips verification
    // as etcd's does for self-signed peer certificates.
    handshake(client, server).unwrap();

    // No peer TLS: no configurations.
    let cfg = serve_cfg(&["--data-dir", data]);
    assert!(peer_server_config(&cfg).unwrap().is_none());
    assert!(peer_client_config(&cfg).unwrap().is_none());
}

#[test]
fn peer_configs_with_files_verify_both_ways() {
    let pki = setup();
    pki.issue("peer", Some("member-1"), &["localhost", "127.0.0.1"], 10);
    pki.issue("intruder", Some("intruder"), &["localhost"], 11);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (cert, key, ca) = (
        pki.path("peer.crt"),
        pki.path("peer.key"),
        pki.path("ca.crt"),
    );
    let cfg = serve_cfg(&[
        "--data-dir",
        data,
        "--peer-cert-file",
        &cert,
        "--peer-key-file",
        &key,
        "--peer-trusted-ca-file",
        &ca,
        "--peer-client-cert-auth",
        "--peer-cert-allowed-cn",
        "member-1",
    ]);
    let server = peer_server_config(&cfg).unwrap().unwrap();
    let client = peer_client_config(&cfg).unwrap().unwrap();
    let (_, s) = handshake(client, server.clone()).unwrap();
    let peer = &s.peer_certificates().unwrap()[0];
    assert_eq!(common_name(peer).as_deref(), Some("member-1"));
    assert!(check_client_cert_san(peer, "127.0.0.1".parse().unwrap()).is_ok());
    assert!(check_client_cert_san(peer, "10.1.2.3".parse().unwrap()).is_err());
    // A certificate from the same CA with another CN is refused.
    let opts = default_opts();
    assert!(handshake(pki.client(Some("intruder"), &opts), server).is_err());
}

#[test]
fn host_matching_like_go() {
    let pki = setup();
    pki.issue("w", Some("w"), &["*.example.com", "::1"], 12);
    let pem = std::fs::read(pki.path("w.crt")).unwrap();
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    assert!(cert_matches_host(&der, "a.example.com"));
    assert!(cert_matches_host(&der, "A.Example.COM."));
    assert!(!cert_matches_host(&der, "a.b.example.com"));
    assert!(!cert_matches_host(&der, "example.com"));
    assert!(cert_matches_host(&der, "::1"));
    assert!(cert_matches_host(&der, "[::1]"));
    assert!(!cert_matches_host(&der, "127.0.0.1"));
}
