//! `--tls auto`: the controller's own certificate, created on first start and kept.
//!
//! The key (ECDSA P-256, mode 0600) is created once and never replaced, so the pin (the
//! SHA-256 of its SubjectPublicKeyInfo, carried in join tokens) stays the same across
//! restarts. The certificate is reused while it names every wanted host; when the names
//! change it is re-issued with the same key, which keeps the pin.

use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use cladnet_proto::tls::Pin;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tracing::{info, warn};

/// File name of the certificate in the TLS directory.
pub const CERT_FILE: &str = "controller.crt";
/// File name of the private key in the TLS directory.
pub const KEY_FILE: &str = "controller.key";

/// The self-signed certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
#[error("TLS auto {path}: {reason}")]
pub struct AutoTlsError {
    path: String,
    reason: String,
}

fn err(path: &Path, reason: impl ToString) -> AutoTlsError {
    AutoTlsError {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The certificate and key files of `--tls auto`, and the pin.
#[derive(Debug, Clone)]
pub struct AutoCert {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key (0600).
    pub key: PathBuf,
    /// The pin of the key.
    pub pin: Pin,
}

/// Names a certificate lists when none are given: `localhost`, the loopback addresses and
/// the machine's host name, plus `extra` (`--tls-san`, the listen address).
pub fn default_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && ServerName::try_from(h.to_owned()).is_ok() {
            names.push(h.to_owned());
        }
    }
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// Loads or creates the key and certificate in `dir`, listing `names` (DNS names or IP
/// addresses).
pub fn ensure(dir: &Path, names: &[String]) -> Result<AutoCert, AutoTlsError> {
    for n in names {
        ServerName::try_from(n.clone()).map_err(|_| {
            err(
                dir,
                format!("--tls-san {n:?} is not a DNS name or IP address"),
            )
        })?;
    }
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let key = match std::fs::read_to_string(&key_path) {
        Ok(pem) => {
            let mode = std::fs::metadata(&key_path).map_err(|e| err(&key_path, e))?;
            if mode.permissions().mode() & 0o077 != 0 {
                warn!(path = %key_path.display(), "TLS key was readable by others; setting mode 0600");
                std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| err(&key_path, e))?;
            }
            rcgen::KeyPair::from_pem(&pem).map_err(|e| err(&key_path, e))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = rcgen::KeyPair::generate().map_err(|e| err(&key_path, e))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .map_err(|e| err(&key_path, e))?;
            f.write_all(key.serialize_pem().as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| err(&key_path, e))?;
            info!(path = %key_path.display(), "created the controller's TLS key");
            key
        }
        Err(e) => return Err(err(&key_path, e)),
    };
    let key_pin = Pin::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&key));
    if let Some(pin) = reusable(&cert_path, key_pin, names) {
        return Ok(AutoCert {
            cert: cert_path,
            key: key_path,
            pin,
        });
    }
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| err(dir, e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cladnet-controller");
    let cert = params.self_signed(&key).map_err(|e| err(&cert_path, e))?;
    let tmp = dir.join(format!("{CERT_FILE}.tmp"));
    std::fs::write(&tmp, cert.pem())
        .and_then(|()| std::fs::rename(&tmp, &cert_path))
        .map_err(|e| err(&cert_path, e))?;
    let pin = Pin::of_certificate(cert.der()).map_err(|e| err(&cert_path, e))?;
    info!(path = %cert_path.display(), names = ?names, %pin, "issued the controller's self-signed TLS certificate");
    Ok(AutoCert {
        cert: cert_path,
        key: key_path,
        pin,
    })
}

/// The existing certificate's pin, if it is for `key_pin` and names every one of `names`.
fn reusable(cert_path: &Path, key_pin: Pin, names: &[String]) -> Option<Pin> {
    let der = CertificateDer::from_pem_file(cert_path).ok()?;
    let pin = Pin::of_certificate(&der).ok()?;
    if pin != key_pin {
        warn!(path = %cert_path.display(), "TLS certificate does not match the key; re-issuing");
        return None;
    }
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            let name = ServerName::try_from(n.as_str()).expect("checked");
            cert.verify_is_valid_for_subject_name(&name).is_err()
        })
        .collect();
    if !missing.is_empty() {
        info!(path = %cert_path.display(), ?missing, "TLS certificate lacks names; re-issuing with the same key");
        return None;
    }
    Some(pin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused_and_reissued_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let names = default_names(&["ctl.example".into(), "192.0.2.7".into()]);
        let first = ensure(&tls, &names).unwrap();
        let mode = std::fs::metadata(&first.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key mode {mode:o}");
        let cert_pem = std::fs::read(&first.cert).unwrap();
        assert_eq!(Pin::of_pem_file(&first.cert).unwrap(), first.pin);

        // Restart: the same files.
        let again = ensure(&tls, &names).unwrap();
        assert_eq!(again.pin, first.pin);
        assert_eq!(std::fs::read(&again.cert).unwrap(), cert_pem);

        // A new name: a new certificate, the same key and pin.
        let mut more = names.clone();
        more.push("ctl2.example".into());
        let reissued = ensure(&tls, &more).unwrap();
        assert_eq!(reissued.pin, first.pin);
        assert_ne!(std::fs::read(&reissued.cert).unwrap(), cert_pem);

        let bad = ensure(&tls, &["not a name".into()])
            .unwrap_err()
            .to_string();
        assert!(bad.contains("--tls-san"), "{bad}");
    }
}
