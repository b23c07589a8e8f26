//! The secret files a PostgreSQL gateway's settings name (the password file, the CA file): read bounded, each error naming the file and never its content.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The largest password or CA file read.
pub const MAX_SECRET_FILE: u64 = 1 << 20;

/// The password in `path`: the file's first line. Errors name the file, never its content.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    let bytes = crate::fsx::read_regular(path, MAX_SECRET_FILE).map_err(|e| {
        format!(
            "cannot read {}: {e}; accepted: a file holding only the password",
            path.display()
        )
    })?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(format!(
            "{} is empty; accepted: a file holding only the password",
            path.display()
        ));
    }
    Ok(password)
}

/// The certificates of a PEM CA file; at least one.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = crate::fsx::read_regular(path, MAX_SECRET_FILE).map_err(|e| {
        format!(
            "cannot read {}: {e}; accepted: a PEM file of CA certificates",
            path.display()
        )
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "{} is not a PEM file ({e}); accepted: a PEM file of CA certificates",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate; accepted: a PEM file with -----BEGIN CERTIFICATE----- blocks",
            path.display()
        ));
    }
    Ok(certs)
}
