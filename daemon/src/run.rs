//! `umbra run`: the daemon. It wires the identity, the TUN, the links, the
//! datapath and the control socket together, answers control requests, and
//! handles signals (docs/architecture.md, "The service").

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use umbra_config::Config;
use umbra_routing::address;

use crate::cli::ConfigPath;
use crate::control::{self, Request, Response};
use crate::datapath;
use crate::db::Store;
use crate::events::{self, DatapathTx, Input};
use crate::links::Links;
use crate::metrics::{self, Metrics};
use crate::portmap::{PortMap, PortMapStatus};
use crate::state_dir::{self, StateLock};
use crate::vital::{Deaths, Vital};

/// How long an invite works unless `--ttl` says otherwise.
const DEFAULT_INVITE_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What `status` reports; shared between the daemon's tasks.
#[derive(Debug)]
struct NodeView {
    identity_public: [u8; 32],
    prefix: u8,
    started: Instant,
    tun: Option<(String, u32)>,
    config: Config,
    links: Arc<Links>,
    datapath: DatapathTx,
    port_mapping: PortMapStatus,
    /// The DNS responder's counters, when `[dns] listen` is set.
    dns: Option<Arc<crate::dns::DnsCounters>>,
    /// The SOCKS proxy's and the userspace stack's counters, when either
    /// runs.
    apps: Option<crate::apps::Status>,
}

impl NodeView {
    fn status(&self) -> Value {
        let key = self.identity_public;
        let (links_up, links_total) = self.links.counts();
        json!({
            "address": address::address_for_key(&key, self.prefix).to_string(),
            "subnet": format!("{}/{}", address::subnet_for_key(&key, self.prefix), address::SUBNET_PREFIX_LEN),
            "public_key": hex::encode(key),
            "name": umbra_routing::name::name_for_key(&key),
            "uptime_secs": self.started.elapsed().as_secs(),
            "threads": tokio::runtime::Handle::try_current()
                .map_or(0, |h| h.metrics().num_workers()),
            "listeners": self.links.listeners(),
            "listener": self.links.listener_json(),
            "links_up": links_up,
            "links_total": links_total,
            "circuits": 0,
            "tun": self.tun.as_ref().map(|(name, mtu)| json!({"name": name, "mtu": mtu})),
            "nat": nat_status(&self.links, &self.port_mapping),
            "relay": self.links.relay_json(),
            "traversal": self.links.traversal_counters().json(),
            "proposals": self.links.proposals_json(),
            "dns": match (&self.dns, self.config.dns.listen) {
                (Some(c), Some(listen)) => c.json(listen),
                _ => Value::Null,
            },
            "socks": self.apps.as_ref().map_or(Value::Null, crate::apps::Status::socks_json),
            "stack": self.apps.as_ref().map_or(Value::Null, crate::apps::Status::stack_json),
            "version": env!("CARGO_PKG_VERSION"),
        })
    }
}

/// `status`'s `nat`: the mapping the live outbound links show, the
/// external endpoints peers saw, and the port mapping at the gateway
/// (docs/architecture.md, "NAT" and "Port mapping").
fn nat_status(links: &Links, port_mapping: &PortMapStatus) -> Value {
    let class = links.nat_class();
    json!({
        "mapping": class.mapping.as_str(),
        "external": class.external.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "port_mapping": port_mapping.json(),
    })
}

/// Answers one control request.
async fn handle(view: Arc<RwLock<NodeView>>, links: Arc<Links>, req: Request) -> Response {
    let result = match req {
        Request::Status => {
            let snapshot = view.read().map(|v| (v.status(), v.datapath.clone())).ok();
            match snapshot {
                Some((mut status, datapath)) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    if datapath.send(Input::Status(tx)).await.is_ok()
                        && let Ok(r) = rx.await
                    {
                        status["circuits"] = json!(r["circuits"].as_array().map_or(0, Vec::len));
                        status["circuit_list"] = r["circuits"].clone();
                        status["graph"] = r["graph"].clone();
                        status["metrics"] = r["metrics"].clone();
                        status["reachability"] = r["reachability"].clone();
                        status["warnings"] = r["warnings"].clone();
                        status["ledgers"] = r["ledgers"].clone();
                    }
                    Ok(status)
                }
                None => Err(anyhow::anyhow!("internal error: node state unavailable")),
            }
        }
        Request::Peers => Ok(links.peers_json()),
        Request::Path { address } => {
            let datapath = view.read().ok().map(|v| v.datapath.clone());
            let (tx, rx) = tokio::sync::oneshot::channel();
            match datapath {
                Some(d) if d.send(Input::Path(address, tx)).await.is_ok() => match rx.await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(anyhow::anyhow!("{e}")),
                    Err(_) => Err(anyhow::anyhow!(
                        "the daemon is stopping: its datapath has ended"
                    )),
                },
                _ => Err(anyhow::anyhow!(
                    "the daemon is starting or stopping: its datapath is not running"
                )),
            }
        }
        Request::Agreements => links.agreements_json().await,
        Request::Revoke { id } => links.revoke(id).await,
        Request::Accept { token } => links.accept(&token).await,
        Request::AcceptProposal { id } => links.accept_proposal(id).await,
        Request::RejectProposal { id } => links.reject_proposal(id).await,
        Request::Propose {
            to,
            terms,
            note,
            ttl_secs,
            wait_secs,
        } => {
            let terms = match terms {
                Some(t) => t.parse().map_err(|e| anyhow::anyhow!("--terms {t}: {e}")),
                None => Ok(umbra_config::Terms::default()),
            };
            match terms {
                Ok(terms) => {
                    let secs = std::time::Duration::from_secs;
                    let ttl = ttl_secs.map_or(crate::links::PROPOSAL_TTL_DEFAULT, secs);
                    let wait = wait_secs
                        .map_or(crate::links::PROPOSE_WAIT, secs)
                        .min(crate::links::PROPOSE_WAIT * 3);
                    links
                        .propose(&to, terms, note.as_deref().unwrap_or(""), ttl, wait)
                        .await
                }
                Err(e) => Err(e),
            }
        }
        Request::Invite {
            terms,
            ttl_secs,
            endpoints,
        } => (|| {
            let terms = match terms {
                Some(t) => t.parse().map_err(|e| anyhow::anyhow!("--terms {t}: {e}"))?,
                None => umbra_config::Terms::default(),
            };
            let ttl = ttl_secs
                .map(std::time::Duration::from_secs)
                .unwrap_or(DEFAULT_INVITE_TTL);
            let (token, expiry, endpoints) = links.invite(terms, ttl, endpoints)?;
            let mut v = json!({"token": token, "expiry_unix": expiry, "terms": terms.to_string(), "endpoints": endpoints});
            if endpoints.is_empty() {
                v["note"] = json!(
                    "the token names no endpoint: this node has none others can dial, so the \
                     accepting node answers through the overlay (it needs a link of its own that \
                     reaches this node, or a partner in common); pass --endpoint HOST:PORT if this \
                     node can be dialed"
                );
            }
            Ok(v)
        })(),
    };
    match result {
        Ok(v) => Response::ok(v),
        Err(e) => Response::error(format!("{e:#}")),
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) fn run(config: Config, config_path: ConfigPath, control: Option<PathBuf>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(config.threads))
        .enable_all()
        .thread_name("umbra")
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(config, config_path, control))
}

async fn run_async(
    config: Config,
    config_path: ConfigPath,
    control: Option<PathBuf>,
) -> Result<()> {
    state_dir::ensure_state_dir(&config.state_dir)?;
    let _lock = StateLock::acquire(&config.state_dir)?;
    let (identity, created) = state_dir::load_or_create_identity(&config)?;
    if created {
        tracing::info!(path = %config.identity_path().display(), "created a new identity");
    }
    let key = identity.public();
    let prefix = config.address_prefix;
    let addr = address::address_for_key(&key, prefix);
    tracing::info!(address = %addr, public_key = %hex::encode(key), "identity loaded");

    let tun = if config.tun.enabled {
        let settings = umbra_tun::TunSettings {
            name: config.tun.name.clone(),
            mtu: config.tun.mtu,
            address: addr,
            route: (overlay_route(prefix), address::OVERLAY_PREFIX_LEN),
        };
        let tun = umbra_tun::Tun::create(&settings).await?;
        tracing::info!(name = tun.name(), mtu = tun.mtu(), route = %format!("{}/{}", settings.route.0, settings.route.1), "TUN up");
        Some(tun)
    } else {
        tracing::info!("TUN disabled by config");
        None
    };

    let store = Store::open(&config.database_path())?;
    let (datapath_tx, datapath_rx) = events::channel();
    let metrics = Metrics::new();
    let links = Links::new(
        identity.clone(),
        config.clone(),
        store,
        datapath_tx.clone(),
        Arc::clone(&metrics),
    )?;
    let tun = tun.map(Arc::new);
    let (vital, deaths) = Vital::new();
    let (stack_port, apps) = crate::apps::start(&config, addr, tun.is_none(), &datapath_tx, &vital)
        .await?
        .unzip();
    let datapath_task = vital.spawn(
        "datapath",
        datapath::run(
            identity.clone(),
            prefix,
            Arc::clone(&links),
            datapath::Outputs {
                tun: tun.clone(),
                stack: stack_port,
            },
            datapath_rx,
        ),
    );
    let (links_tx, mut links_rx) = tokio::sync::mpsc::channel(64);
    links.start_listeners(links_tx, &vital).await?;
    // With no listener there is nothing to adopt (and the channel is
    // closed at once); with some, it ends only after they all have.
    if !config.listen.https.is_empty() {
        let links = Arc::clone(&links);
        vital.spawn("link adopter", async move {
            while let Some(link) = links_rx.recv().await {
                links.adopt(link, crate::links::LinkKind::Direct);
            }
            Ok(())
        });
    }
    links.spawn_dialers();
    links.spawn_charges(&vital);
    let metrics_task = match config.metrics.listen {
        Some(addr) => {
            let tcp = metrics::bind(addr).await?;
            tracing::info!(addr = %addr, path = metrics::METRICS_PATH, "metrics ready");
            let states = Arc::clone(&links);
            let sources = metrics::Sources {
                metrics,
                datapath: datapath_tx.clone(),
                link_states: Arc::new(move || states.link_states()),
            };
            Some(vital.spawn("metrics server", async move {
                metrics::serve(tcp, sources).await;
                Ok(())
            }))
        }
        None => None,
    };

    let dns = match config.dns.listen {
        Some(addr) => {
            let socket = crate::dns::bind(addr).await?;
            tracing::info!(%addr, "DNS responder for .umbra ready");
            let counters = Arc::new(crate::dns::DnsCounters::default());
            let zone = crate::dns::zone(&config);
            let c = Arc::clone(&counters);
            vital.spawn("DNS responder", crate::dns::serve(socket, zone, c));
            Some(counters)
        }
        None => None,
    };

    let port_map = start_port_mapping(&config, &links);
    if let Some(p) = &port_map {
        links.set_port_mapping(p.status());
    }

    let socket_path = control.unwrap_or_else(|| config.control_socket.clone());
    let listener = control::bind(&socket_path).await?;
    tracing::info!(path = %socket_path.display(), "control socket ready");

    let view = Arc::new(RwLock::new(NodeView {
        identity_public: key,
        prefix,
        started: Instant::now(),
        tun: tun.as_ref().map(|t| (t.name().to_string(), t.mtu())),
        config,
        links: Arc::clone(&links),
        datapath: datapath_tx.clone(),
        port_mapping: port_map.as_ref().map(PortMap::status).unwrap_or_default(),
        dns,
        apps,
    }));

    let result = serve(&listener, &view, &config_path, deaths).await;

    // Clean shutdown: tell systemd, then take down what we set up.
    notify(&[sd_notify::NotifyState::Stopping]);
    drop(listener);
    if let Err(e) = std::fs::remove_file(&socket_path) {
        tracing::warn!(path = %socket_path.display(), error = %e, "could not remove control socket");
    }
    if let Some(p) = port_map {
        p.stop().await;
    }
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    if datapath_tx.send(Input::Flush(done_tx)).await.is_ok() {
        let _ = done_rx.await;
    }
    if let Some(t) = metrics_task {
        t.stop().await;
    }
    datapath_task.stop().await;
    if let Some(tun) = tun.and_then(|t| Arc::try_unwrap(t).ok()) {
        tun.remove().await?;
        tracing::info!("TUN removed");
    }
    tracing::info!("stopped");
    result
}

/// Starts the port-mapping task when `[nat] port_mapping` is on and a link listener
/// takes IPv4 (docs/architecture.md, "Port mapping"); the first such listener's port is
/// mapped.
fn start_port_mapping(config: &Config, links: &Links) -> Option<PortMap> {
    if !config.nat.port_mapping {
        tracing::info!("port mapping off ([nat] port_mapping = false)");
        return None;
    }
    let listener = links
        .listeners()
        .iter()
        .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
        .find_map(|a| match a {
            std::net::SocketAddr::V4(v4) => Some(v4),
            std::net::SocketAddr::V6(v6) if v6.ip().is_unspecified() => Some(
                std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, v6.port()),
            ),
            std::net::SocketAddr::V6(_) => None,
        })?;
    let port = std::num::NonZeroU16::new(listener.port())?;
    let ip = *listener.ip();
    let bind = (!ip.is_unspecified()).then_some(ip);
    Some(PortMap::start(port, bind))
}

/// The overlay route's network address: `P::/7`.
fn overlay_route(prefix: u8) -> std::net::Ipv6Addr {
    let mut o = [0u8; 16];
    o[0] = prefix & 0xfe;
    o.into()
}

async fn serve(
    listener: &tokio::net::UnixListener,
    view: &Arc<RwLock<NodeView>>,
    config_path: &ConfigPath,
    mut deaths: Deaths,
) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!("ready");
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(()); }
            _ = hup.recv() => reload(view, config_path),
            Some(death) = deaths.recv() => {
                tracing::error!("{death}: the node cannot work without it; shutting down to be restarted");
                return Err(anyhow::anyhow!("{death}"));
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let view = Arc::clone(view);
                    let Some(links) = view.read().ok().map(|v| Arc::clone(&v.links)) else { continue };
                    tokio::spawn(control::serve_client(stream, move |req| {
                        handle(Arc::clone(&view), Arc::clone(&links), req)
                    }));
                }
                Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
            },
        }
    }
}

/// SIGHUP: re-reads the config. A bad config is logged and the running one
/// is kept. Settings that need a restart are named.
fn reload(view: &Arc<RwLock<NodeView>>, config_path: &ConfigPath) {
    notify(&[sd_notify::NotifyState::Reloading]);
    match config_path.load() {
        Err(e) => tracing::error!("SIGHUP: keeping the running config: {e}"),
        Ok(new) => {
            let Ok(mut v) = view.write() else { return };
            let old = &v.config;
            let mut needs_restart = Vec::new();
            if new.state_dir != old.state_dir {
                needs_restart.push("state_dir");
            }
            if new.control_socket != old.control_socket {
                needs_restart.push("control_socket");
            }
            if new.address_prefix != old.address_prefix {
                needs_restart.push("address_prefix");
            }
            if new.threads != old.threads {
                needs_restart.push("threads");
            }
            if new.tun != old.tun {
                needs_restart.push("[tun]");
            }
            if new.metrics != old.metrics {
                needs_restart.push("[metrics]");
            }
            if new.dns != old.dns {
                needs_restart.push("[dns]");
            }
            if new.names != old.names {
                needs_restart.push("[names]");
            }
            if new.socks != old.socks {
                needs_restart.push("[socks]");
            }
            if new.expose != old.expose {
                needs_restart.push("[[expose]]");
            }
            if new.nat.port_mapping != old.nat.port_mapping {
                needs_restart.push("[nat] port_mapping");
            }
            if needs_restart.is_empty() {
                tracing::info!(path = %config_path.path.display(), "SIGHUP: config reloaded");
            } else {
                tracing::warn!(
                    path = %config_path.path.display(),
                    "SIGHUP: config reloaded; {} change only on restart",
                    needs_restart.join(", ")
                );
            }
            v.links.set_config(new.clone());
            v.config = new;
        }
    }
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells systemd (when it runs us with Type=notify); a no-op otherwise.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}
