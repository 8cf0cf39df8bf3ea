//! The tokio side of links: the TLS listener, the cover site, the dialer.
