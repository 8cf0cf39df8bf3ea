//! Prometheus metrics at `[metrics] listen` (docs/architecture.md,
//! "Metrics"): the registry and its metric families, the handle the
//! datapath and the links code count with, and the small HTTP server that
//! answers `GET /metrics` (and 404 to every other path), as Tor's
//! MetricsPort does.
//!
//! Counters that happen in the daemon (outbound handshakes, circuit build
//! times) are counted as they happen. Figures that others already keep
//! (the routing core's cells, drops and circuits, the links' bytes and
//! padding, the listener's handshakes, the peer table's link states) are
//! read when a scrape comes, so the datapath pays nothing between scrapes.
//! No label carries an address or a key.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use umbra_routing::router::RouterCore;
use umbra_transport::io::{LinkListener, LinkStats, LinkStatsHandle};
use umbra_transport::proto::padding::CELL_FRAME_WIRE_LEN;

use crate::events::{DatapathTx, Input, LinkId};

/// The one path served.
pub(crate) const METRICS_PATH: &str = "/metrics";

/// OpenMetrics text, which Prometheus reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits for the datapath's figures before it answers
/// without them.
const DATAPATH_WAIT: Duration = Duration::from_secs(2);

/// One label.
type Label = (&'static str, &'static str);

/// What the routing core tells a scrape: cells it took in from links and
/// gave out for links, open circuits by role and packets dropped by reason,
/// all as the core counts them.
#[derive(Debug, Clone, Default)]
pub(crate) struct CoreFigures {
    cells_in: u64,
    cells_out: u64,
    circuits: Vec<(&'static str, u64)>,
    drops: Vec<(&'static str, u64)>,
    /// Per agreement (by its local id: labels never name a key): balance,
    /// relayed for and by the peer this period, mismatches, state.
    ledgers: Vec<LedgerFigures>,
    /// Circuits refused for a neighbour's ledger.
    circuits_refused: u64,
    /// Ledger reports dropped, by reason.
    reports_dropped: Vec<(&'static str, u64)>,
}

/// One agreement's ledger in a scrape.
#[derive(Debug, Clone, Default)]
struct LedgerFigures {
    agreement: String,
    balance: i64,
    relayed_for_peer: u64,
    relayed_by_peer: u64,
    mismatches: u64,
    state: &'static str,
}

impl CoreFigures {
    /// The figures of `core` now; `ids` gives each agreement's local id by
    /// its peer's key.
    pub(crate) fn of(core: &RouterCore, ids: &HashMap<[u8; 32], i64>) -> CoreFigures {
        let m = core.circuit_metrics();
        let d = &m.drops;
        let r = core.counters();
        let l = core.ledgers();
        let rd = l.drops();
        CoreFigures {
            ledgers: l
                .records()
                .into_iter()
                .filter_map(|(peer, rec)| {
                    Some(LedgerFigures {
                        agreement: ids.get(&peer)?.to_string(),
                        balance: rec.balance,
                        relayed_for_peer: rec.relayed_for_peer,
                        relayed_by_peer: rec.relayed_by_peer,
                        mismatches: rec.mismatches,
                        state: l.standing(&peer).name(),
                    })
                })
                .collect(),
            circuits_refused: m.circuits_refused,
            reports_dropped: vec![
                ("malformed", rd.malformed),
                ("forged", rd.forged),
                ("replayed", rd.replayed),
                ("too_often", rd.too_often),
            ],
            cells_in: m.cells_in,
            cells_out: m.cells_out,
            circuits: vec![
                ("origin", m.origin_circuits),
                ("relay", m.relay_circuits),
                ("destination", m.destination_circuits),
            ],
            drops: vec![
                ("forged_source", d.forged_source),
                ("replayed", d.replayed),
                ("not_ipv6", d.not_ipv6),
                ("malformed", d.malformed),
                ("send_queue_full", d.send_queue_full),
                ("lost_on_close", d.lost_on_close),
                ("buffer_too_small", d.buffer_too_small),
                ("unknown_circuit", m.unknown_circuit_cells),
                ("not_overlay", r.not_overlay),
                ("no_node", r.no_node),
                ("no_path", r.no_path),
                ("to_self", r.to_self),
                ("icmp_rate_limited", r.icmp_limited),
            ],
        }
    }
}

/// Link counts by state (`up`, `connecting`, `down`) and kind (`direct`,
/// `punched`, `relayed`: how the link's connection reaches the peer, or
/// reached it last), from the peer table.
pub(crate) type LinkStates = Vec<((&'static str, &'static str), u64)>;

/// The registry and every metric family; one per daemon, shared as
/// `Arc<Metrics>`.
pub(crate) struct Metrics {
    registry: Registry,
    links: Family<[Label; 2], Gauge>,
    circuits: Family<[Label; 1], Gauge>,
    cells: Family<[Label; 1], Counter>,
    link_bytes: Family<[Label; 1], Counter>,
    dropped: Family<[Label; 1], Counter>,
    handshakes: Family<[Label; 2], Counter>,
    build_seconds: Family<[Label; 1], Histogram>,
    padding_frames: Family<[Label; 2], Counter>,
    padding_bytes: Family<[Label; 2], Counter>,
    ledger_balance: Family<[(&'static str, String); 2], Gauge>,
    ledger_relayed: Family<[(&'static str, String); 2], Gauge>,
    ledger_mismatches: Family<[(&'static str, String); 1], Counter>,
    ledger_reports_dropped: Family<[Label; 1], Counter>,
    circuits_refused: Counter,
    listener_unauthenticated: Gauge,
    listener_limited: Family<[Label; 1], Counter>,
    /// Stats of the links adopted and not yet down.
    live: Mutex<HashMap<LinkId, LinkStatsHandle>>,
    /// The sums of the links that went down.
    retired: Mutex<LinkStats>,
    /// The listener, whose counters give the inbound handshakes.
    listener: OnceLock<Arc<LinkListener>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Circuit build buckets: 10 ms to about 41 s, doubling.
fn build_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

impl Metrics {
    /// A registry with every family registered, all at zero.
    pub(crate) fn new() -> Arc<Metrics> {
        let mut m = Metrics {
            registry: Registry::with_prefix("umbra"),
            links: Family::default(),
            circuits: Family::default(),
            cells: Family::default(),
            link_bytes: Family::default(),
            dropped: Family::default(),
            handshakes: Family::default(),
            build_seconds: Family::new_with_constructor(build_histogram),
            padding_frames: Family::default(),
            padding_bytes: Family::default(),
            ledger_balance: Family::default(),
            ledger_relayed: Family::default(),
            ledger_mismatches: Family::default(),
            ledger_reports_dropped: Family::default(),
            circuits_refused: Counter::default(),
            listener_unauthenticated: Gauge::default(),
            listener_limited: Family::default(),
            live: Mutex::default(),
            retired: Mutex::default(),
            listener: OnceLock::new(),
        };
        let r = &mut m.registry;
        r.register(
            "links",
            "Links to peers, by state and kind",
            m.links.clone(),
        );
        r.register(
            "circuits",
            "Open circuits this node takes part in, by its role",
            m.circuits.clone(),
        );
        r.register(
            "cells",
            "Cells received from links (in) and queued to links (out)",
            m.cells.clone(),
        );
        r.register_with_unit(
            "link",
            "Bytes of the link frame stream, every frame with its header, padding and keepalives included",
            Unit::Bytes,
            m.link_bytes.clone(),
        );
        r.register(
            "dropped",
            "Packets and cells dropped, by reason",
            m.dropped.clone(),
        );
        r.register(
            "listener_unauthenticated_connections",
            "Connections to the link listener that are not links (yet)",
            m.listener_unauthenticated.clone(),
        );
        r.register(
            "listener_limited",
            "Times the link listener hit a limit on connections that are not links, by limit",
            m.listener_limited.clone(),
        );
        r.register(
            "link_handshakes",
            "Link handshakes, by direction and result",
            m.handshakes.clone(),
        );
        r.register_with_unit(
            "circuit_build",
            "Time from starting a circuit (or pooled prefix) to its being built",
            Unit::Seconds,
            m.build_seconds.clone(),
        );
        r.register(
            "link_padding_frames",
            "Padding frames sent and received, by kind: cover (cell-sized link padding) or write (short padding of writes)",
            m.padding_frames.clone(),
        );
        r.register_with_unit(
            "link_padding",
            "Bytes of padding frames sent and received, headers included, by kind",
            Unit::Bytes,
            m.padding_bytes.clone(),
        );
        r.register_with_unit(
            "ledger_balance",
            "Each agreement's balance: positive when the peer owes this node, by agreement id (as umbra agreements shows it) and state (ok, low_priority, cut_off)",
            Unit::Bytes,
            m.ledger_balance.clone(),
        );
        r.register_with_unit(
            "ledger_relayed",
            "What each agreement's two sides relayed for each other this period, by agreement id and direction (for_peer, by_peer)",
            Unit::Bytes,
            m.ledger_relayed.clone(),
        );
        r.register(
            "ledger_mismatches",
            "Ledger reports from each peer whose counts did not match this node's",
            m.ledger_mismatches.clone(),
        );
        r.register(
            "ledger_reports_dropped",
            "Ledger reports dropped, by reason",
            m.ledger_reports_dropped.clone(),
        );
        r.register(
            "circuits_refused",
            "New circuits refused for the asking neighbour's ledger (past its cutoff, or over its circuit rate)",
            m.circuits_refused.clone(),
        );
        // Every series exists from the start, so a rate over the first
        // scrapes is not missing its zero.
        for dir in ["in", "out"] {
            let _ = m.cells.get_or_create(&[("direction", dir)]);
            let _ = m.link_bytes.get_or_create(&[("direction", dir)]);
            for kind in ["cover", "write"] {
                let l = [("direction", dir), ("kind", kind)];
                let _ = m.padding_frames.get_or_create(&l);
                let _ = m.padding_bytes.get_or_create(&l);
            }
        }
        for result in ["ok", "connect_failed", "failed"] {
            let _ = m
                .handshakes
                .get_or_create(&[("direction", "outbound"), ("result", result)]);
        }
        for kind in ["full", "prefix"] {
            let _ = m.build_seconds.get_or_create(&[("kind", kind)]);
        }
        Arc::new(m)
    }

    /// An outbound link handshake ended with `result`: "ok",
    /// "connect_failed" (no TCP connection) or "failed" (TLS, the link
    /// handshake or the agreement did not go through).
    pub(crate) fn outbound_handshake(&self, result: &'static str) {
        self.handshakes
            .get_or_create(&[("direction", "outbound"), ("result", result)])
            .inc();
    }

    /// A circuit (`kind` "full") or pooled prefix ("prefix") was built
    /// `took` after this node started it.
    pub(crate) fn circuit_built(&self, kind: &'static str, took: Duration) {
        self.build_seconds
            .get_or_create(&[("kind", kind)])
            .observe(took.as_secs_f64());
    }

    /// `n` cells dropped by the datapath itself for `reason` (a circuit
    /// that overran its queue, or shed when the node's queues were full).
    pub(crate) fn count_drop(&self, reason: &'static str, n: u64) {
        self.dropped.get_or_create(&[("reason", reason)]).inc_by(n);
    }

    /// The listener whose counters give the inbound handshakes (set once).
    pub(crate) fn set_listener(&self, listener: Arc<LinkListener>) {
        let _ = self.listener.set(listener);
    }

    /// A link was adopted: its bytes and padding count from now on.
    pub(crate) fn link_up(&self, link: LinkId, stats: LinkStatsHandle) {
        lock(&self.live).insert(link, stats);
    }

    /// A link went down: its figures so far move to the retired sums.
    pub(crate) fn link_down(&self, link: LinkId) {
        let Some(stats) = lock(&self.live).remove(&link) else {
            return;
        };
        add(&mut lock(&self.retired), &stats.get());
    }

    /// Every link's figures summed, retired and live.
    fn link_totals(&self) -> LinkStats {
        let mut sum = *lock(&self.retired);
        for s in lock(&self.live).values() {
            add(&mut sum, &s.get());
        }
        sum
    }

    /// Brings the figures read at scrape time up to date, then encodes
    /// everything.
    fn render(&self, core: Option<&CoreFigures>, states: &LinkStates) -> String {
        for ((state, kind), n) in states {
            self.links
                .get_or_create(&[("state", state), ("kind", kind)])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        if let Some(core) = core {
            set(
                &self.cells.get_or_create(&[("direction", "in")]),
                core.cells_in,
            );
            set(
                &self.cells.get_or_create(&[("direction", "out")]),
                core.cells_out,
            );
            for (role, n) in &core.circuits {
                self.circuits
                    .get_or_create(&[("role", role)])
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
            for (reason, n) in &core.drops {
                set(&self.dropped.get_or_create(&[("reason", reason)]), *n);
            }
            // Agreements come and go: only the current ones are shown.
            self.ledger_balance.clear();
            self.ledger_relayed.clear();
            for l in &core.ledgers {
                self.ledger_balance
                    .get_or_create(&[
                        ("agreement", l.agreement.clone()),
                        ("state", l.state.to_string()),
                    ])
                    .set(l.balance);
                for (dir, n) in [
                    ("for_peer", l.relayed_for_peer),
                    ("by_peer", l.relayed_by_peer),
                ] {
                    self.ledger_relayed
                        .get_or_create(&[
                            ("agreement", l.agreement.clone()),
                            ("direction", dir.to_string()),
                        ])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                set(
                    &self
                        .ledger_mismatches
                        .get_or_create(&[("agreement", l.agreement.clone())]),
                    l.mismatches,
                );
            }
            for (reason, n) in &core.reports_dropped {
                set(
                    &self
                        .ledger_reports_dropped
                        .get_or_create(&[("reason", reason)]),
                    *n,
                );
            }
            set(&self.circuits_refused, core.circuits_refused);
        }
        let t = self.link_totals();
        set(
            &self.link_bytes.get_or_create(&[("direction", "in")]),
            t.bytes_in,
        );
        set(
            &self.link_bytes.get_or_create(&[("direction", "out")]),
            t.bytes_out,
        );
        let cover_len = CELL_FRAME_WIRE_LEN as u64;
        for (dir, frames, bytes, cover) in [
            (
                "in",
                t.padding_frames_in,
                t.padding_bytes_in,
                t.cover_frames_in,
            ),
            (
                "out",
                t.padding_frames_out,
                t.padding_bytes_out,
                t.cover_frames_out,
            ),
        ] {
            let cover_bytes = cover * cover_len;
            let f = |kind| {
                self.padding_frames
                    .get_or_create(&[("direction", dir), ("kind", kind)])
            };
            let b = |kind| {
                self.padding_bytes
                    .get_or_create(&[("direction", dir), ("kind", kind)])
            };
            set(&f("cover"), cover);
            set(&f("write"), frames.saturating_sub(cover));
            set(&b("cover"), cover_bytes);
            set(&b("write"), bytes.saturating_sub(cover_bytes));
        }
        if let Some(l) = self.listener.get() {
            let s = l.stats();
            self.listener_unauthenticated
                .set(i64::try_from(s.unauthenticated).unwrap_or(i64::MAX));
            for (limit, n) in [
                ("total", s.accept_paused),
                ("per_source", s.refused_per_source),
            ] {
                set(&self.listener_limited.get_or_create(&[("limit", limit)]), n);
            }
            for (result, n) in [
                ("ok", s.links_accepted),
                ("refused_wrong_protocol", s.refused_wrong_protocol),
                ("refused_bad_token", s.refused_bad_token),
                ("refused_bad_handshake", s.refused_bad_handshake),
                ("refused_stale", s.refused_stale),
                ("refused_replay", s.refused_replay),
                ("refused_not_authorized", s.refused_not_authorized),
                ("refused_duplicate", s.refused_duplicate),
                ("refused_internal", s.refused_internal),
            ] {
                let c = self
                    .handshakes
                    .get_or_create(&[("direction", "inbound"), ("result", result)]);
                set(&c, n);
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets a counter to a total kept elsewhere (which only grows).
fn set(c: &Counter, v: u64) {
    c.inner().store(v, std::sync::atomic::Ordering::Relaxed);
}

fn add(sum: &mut LinkStats, s: &LinkStats) {
    sum.bytes_in += s.bytes_in;
    sum.bytes_out += s.bytes_out;
    sum.padding_frames_in += s.padding_frames_in;
    sum.padding_frames_out += s.padding_frames_out;
    sum.padding_bytes_in += s.padding_bytes_in;
    sum.padding_bytes_out += s.padding_bytes_out;
    sum.cover_frames_in += s.cover_frames_in;
    sum.cover_frames_out += s.cover_frames_out;
}

/// Binds `[metrics] listen`; failing is fatal at start, like the other
/// listeners.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("[metrics] listen = \"{addr}\": cannot listen"))
}

/// What a scrape reads besides the registry.
#[derive(Clone)]
pub(crate) struct Sources {
    /// The registry.
    pub(crate) metrics: Arc<Metrics>,
    /// Asked for [`CoreFigures`].
    pub(crate) datapath: DatapathTx,
    /// The link states of the peer table.
    pub(crate) link_states: Arc<dyn Fn() -> LinkStates + Send + Sync>,
}

/// Serves `GET /metrics` on `listener` over HTTP/1.1 until the task is
/// dropped.
pub(crate) async fn serve(listener: TcpListener, sources: Sources) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let sources = sources.clone();
                async move { Ok::<_, Infallible>(answer(&sources, &req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

/// One HTTP answer: the metrics for `GET /metrics`, 404 for other paths,
/// 405 for other methods on it.
async fn answer<B>(sources: &Sources, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != METRICS_PATH {
        return reply(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let core = if sources.datapath.send(Input::Metrics(tx)).await.is_ok() {
        tokio::time::timeout(DATAPATH_WAIT, rx)
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    let text = sources
        .metrics
        .render(core.as_ref(), &(sources.link_states)());
    let mut r = Response::new(Full::new(Bytes::from(text)));
    if let Ok(v) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_as_prometheus_asks() {
        let m = Metrics::new();
        m.outbound_handshake("failed");
        m.circuit_built("full", Duration::from_millis(300));
        let core = CoreFigures {
            cells_in: 1,
            cells_out: 3,
            ledgers: vec![LedgerFigures {
                agreement: "3".into(),
                balance: -1200,
                relayed_for_peer: 0,
                relayed_by_peer: 1200,
                mismatches: 0,
                state: "ok",
            }],
            circuits_refused: 2,
            ..CoreFigures::default()
        };
        let states = vec![
            (("up", "direct"), 2),
            (("up", "relayed"), 1),
            (("connecting", "direct"), 1),
        ];
        let text = m.render(Some(&core), &states);
        for want in [
            "umbra_cells_total{direction=\"in\"} 1",
            "umbra_cells_total{direction=\"out\"} 3",
            "umbra_links{state=\"up\",kind=\"direct\"} 2",
            "umbra_links{state=\"up\",kind=\"relayed\"} 1",
            "umbra_link_handshakes_total{direction=\"outbound\",result=\"failed\"} 1",
            "umbra_link_bytes_total{direction=\"out\"} 0",
            "umbra_circuit_build_seconds_count{kind=\"full\"} 1",
            "umbra_link_padding_bytes_total{direction=\"in\",kind=\"cover\"} 0",
            "umbra_link_padding_frames_total{direction=\"out\",kind=\"write\"} 0",
            "umbra_ledger_balance_bytes{agreement=\"3\",state=\"ok\"} -1200",
            "umbra_ledger_relayed_bytes{agreement=\"3\",direction=\"by_peer\"} 1200",
            "umbra_circuits_refused_total 2",
        ] {
            assert!(text.contains(want), "no {want:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
