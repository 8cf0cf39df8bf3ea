//! Listening: binds every `[listen] https` address with its certificate
//! and cover site, and serves it; authenticated link requests go to
//! [`Links::authorize`], accepted links to the daemon's links channel.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use umbra_transport::io::{
    self as tio, AdmissionLimits, CertSource, CoverSite, IncomingLinkInfo, Link, LinkListener,
    LinkSettings, ListenerConfig, TlsSettings,
};

use super::Links;
use crate::vital::Vital;

impl Links {
    /// Binds every `[listen] https` address and serves it. The listener is
    /// made even without one: punched and relayed links are served by it
    /// too (docs/architecture.md, "NAT traversal").
    pub(crate) async fn start_listeners(
        self: &Arc<Self>,
        links_tx: mpsc::Sender<Link>,
        vital: &Vital,
    ) -> Result<()> {
        let config = self.config();
        let cert = match (&config.listen.cert, &config.listen.key) {
            _ if config.listen.acme => CertSource::Acme(tio::AcmeSettings {
                directory: config.listen.acme_directory.clone(),
                contact: config
                    .listen
                    .acme_email
                    .iter()
                    .map(|e| format!("mailto:{e}"))
                    .collect(),
                ca_roots: config.listen.acme_ca.clone(),
                state_dir: config.state_dir.clone(),
            }),
            (Some(cert), Some(key)) => CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => CertSource::SelfSigned {
                dir: config.state_dir.clone(),
            },
        };
        let tls = tio::server_tls_config(&TlsSettings {
            cert,
            server_name: config.listen.server_name.clone(),
        })
        .context("TLS setup")?;
        let cover = if let Some(root) = &config.cover.root {
            CoverSite::directory(root)?
        } else if let Some(up) = &config.cover.upstream {
            CoverSite::upstream(up)?
        } else {
            let name = if config.listen.server_name.is_empty() {
                tio::DEFAULT_SERVER_NAME.to_string()
            } else {
                config.listen.server_name.clone()
            };
            let modified = std::fs::metadata(config.identity_path())
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            CoverSite::built_in(&name, modified)
        };
        let me = Arc::clone(self);
        let listener = Arc::new(LinkListener::new(ListenerConfig {
            identity: self.identity.clone(),
            tls,
            cover,
            authorizer: Arc::new(move |info: &IncomingLinkInfo<'_>| me.authorize(info)),
            link: LinkSettings::default(),
            admission: AdmissionLimits::default(),
        }));
        self.metrics.set_listener(Arc::clone(&listener));
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&listener));
        for addr in &config.listen.https {
            let tcp = tio::bind_listener(*addr).with_context(|| format!("listening on {addr}"))?;
            let local = tcp.local_addr()?;
            tracing::info!(%local, "link listener up");
            self.listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(local);
            let (listener, links_tx) = (Arc::clone(&listener), links_tx.clone());
            vital.spawn("link listener", async move {
                tio::serve(tcp, listener, links_tx).await;
                Ok(())
            });
        }
        Ok(())
    }
}
