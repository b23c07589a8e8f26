//! The process's one rustls crypto provider (ring): installed once, before any TLS client is built.

/// Installs ring as rustls's process-wide provider; a provider installed before (by an earlier
/// call, or by a library) is kept.
pub fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
