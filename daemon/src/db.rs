//! The state database, `STATE_DIR/umbra.db` (SQLite, WAL): agreements,
//! invites, proposals and ledgers, which must survive restarts and crashes
//! (`docs/architecture.md, "State on disk"`).
//!
//! Every change is one transaction with `synchronous = FULL`, so a crash
//! loses at most the change in flight, never a stored agreement.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};
use umbra_config::Terms;
use umbra_routing::ledger::LedgerRecord;

/// The schema version this code writes; older databases are migrated.
const SCHEMA_VERSION: i64 = 4;

/// The life of an agreement: the `state` of `umbra agreements --json`
/// (`docs/cli.md, "umbra agreements"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgreementState {
    /// Proposed, not yet accepted by both.
    Pending,
    /// Both sides signed; the link may run.
    Active,
    /// Ended by either side; kept for the record.
    Revoked,
}

impl AgreementState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AgreementState::Pending => "pending",
            AgreementState::Active => "active",
            AgreementState::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Result<AgreementState> {
        Ok(match s {
            "pending" => AgreementState::Pending,
            "active" => AgreementState::Active,
            "revoked" => AgreementState::Revoked,
            other => bail!("unknown agreement state {other:?} in the database"),
        })
    }
}

/// How an agreement was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `umbra invite` on one side, `umbra accept` on the other.
    Invite,
    /// Both sides list each other as `[[peer]]`.
    Config,
    /// `umbra propose` on one side, `umbra agreements accept` on the other.
    Proposal,
}

impl Origin {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Origin::Invite => "invite",
            Origin::Config => "config",
            Origin::Proposal => "proposal",
        }
    }

    fn parse(s: &str) -> Result<Origin> {
        Ok(match s {
            "invite" => Origin::Invite,
            "config" => Origin::Config,
            "proposal" => Origin::Proposal,
            other => bail!("unknown agreement origin {other:?} in the database"),
        })
    }
}

/// One stored agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Agreement {
    /// Local id, for `umbra agreements revoke ID`.
    pub(crate) id: i64,
    /// The other side's public key.
    pub(crate) peer_key: [u8; 32],
    /// Where it stands.
    pub(crate) state: AgreementState,
    /// Bytes per period, each way.
    pub(crate) terms: Terms,
    /// Where the peer may be dialed (empty: it dials us).
    pub(crate) endpoints: Vec<String>,
    /// How it was made.
    pub(crate) origin: Origin,
    /// When it was made (unix seconds).
    pub(crate) created_unix: u64,
    /// Bumped on every change of terms or state.
    pub(crate) revision: u64,
    /// The peer's signature over the agreement, once received.
    pub(crate) peer_signature: Option<Vec<u8>>,
}

/// The state database.
#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database and migrates its schema.
    /// A database it cannot read (corrupt, not SQLite, of a newer schema)
    /// or write is an error that says so, and the file is left as it is.
    pub(crate) fn open(path: &Path) -> Result<Store> {
        let leave = || {
            format!(
                "the state database {} cannot be used; umbra leaves it untouched (move it \
                 aside to start without agreements and ledgers, or restore a backup)",
                path.display()
            )
        };
        let conn = Connection::open(path).with_context(leave)?;
        if conn.is_readonly(rusqlite::MAIN_DB)? {
            bail!(
                "the state database {} is not writable here: run umbra as the user that owns \
                 it (`ls -l {}`)",
                path.display(),
                path.display()
            );
        }
        // Reading the schema version first is what fails on a file that is
        // not a database, before any pragma could write to it.
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .with_context(leave)?;
        if version > SCHEMA_VERSION {
            bail!(
                "the state database {} has schema version {version}, newer than this umbra \
                 ({SCHEMA_VERSION}); upgrade umbra (the database is left untouched)",
                path.display()
            );
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(leave)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let store = Store { conn };
        store.migrate().with_context(leave)?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(store)
    }

    /// Opens an existing database read-only, without migrating it: for
    /// `umbra doctor`, which must not change the state it checks. A
    /// database of another schema version is refused.
    pub(crate) fn open_read_only(path: &Path) -> Result<Store> {
        use rusqlite::OpenFlags;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening state database {} read-only", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            bail!(
                "the database {} has schema version {version}, this umbra reads {SCHEMA_VERSION}",
                path.display()
            );
        }
        Ok(Store { conn })
    }

    fn migrate(&self) -> Result<()> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            bail!(
                "the database has schema version {version}, newer than this umbra ({SCHEMA_VERSION}); upgrade umbra"
            );
        }
        if version < 1 {
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE agreements (
                     id INTEGER PRIMARY KEY,
                     peer_key BLOB NOT NULL UNIQUE CHECK (length(peer_key) = 32),
                     state TEXT NOT NULL,
                     terms TEXT NOT NULL,
                     endpoints TEXT NOT NULL,
                     origin TEXT NOT NULL,
                     created_unix INTEGER NOT NULL,
                     revision INTEGER NOT NULL,
                     peer_signature BLOB
                 );
                 CREATE TABLE invites (
                     secret BLOB PRIMARY KEY CHECK (length(secret) = 16),
                     terms TEXT NOT NULL,
                     expiry_unix INTEGER NOT NULL,
                     used_unix INTEGER,
                     used_by BLOB
                 );
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE graph_cache (
                     id INTEGER PRIMARY KEY CHECK (id = 1),
                     saved_unix INTEGER NOT NULL,
                     records BLOB NOT NULL
                 );
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        if version < 3 {
            self.conn.execute_batch(MIGRATE_PROPOSALS)?;
        }
        if version < 4 {
            // Unsigned counts are stored as their 64 bits (SQLite integers
            // are signed); `agreed` and `peer_agreed` are NULL before the
            // first check.
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE ledgers (
                     peer_key BLOB PRIMARY KEY CHECK (length(peer_key) = 32),
                     period INTEGER NOT NULL,
                     period_secs INTEGER NOT NULL,
                     relayed_for_peer INTEGER NOT NULL,
                     relayed_by_peer INTEGER NOT NULL,
                     balance INTEGER NOT NULL,
                     total_for_peer INTEGER NOT NULL,
                     total_by_peer INTEGER NOT NULL,
                     last_check_unix INTEGER NOT NULL,
                     agreed INTEGER,
                     peer_agreed INTEGER,
                     mismatches INTEGER NOT NULL
                 );
                 PRAGMA user_version = 4;
                 COMMIT;",
            )?;
        }
        Ok(())
    }

    /// Saves the graph cache (`docs/protocol.md, "Flooding"`), replacing the last one.
    pub(crate) fn save_graph(&self, records: &[u8], now: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO graph_cache (id, saved_unix, records) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET saved_unix = ?1, records = ?2",
            rusqlite::params![now as i64, records],
        )?;
        Ok(())
    }

    /// The saved graph cache, if any.
    pub(crate) fn load_graph(&self) -> Result<Option<Vec<u8>>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .query_row("SELECT records FROM graph_cache WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// The agreements matching `filter` (an SQL condition on `params`), by id.
    fn select(&self, filter: &str, params: impl rusqlite::Params) -> Result<Vec<Agreement>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, peer_key, state, terms, endpoints, origin, created_unix, revision, peer_signature
             FROM agreements WHERE {filter} ORDER BY id"
        ))?;
        let rows = stmt.query_map(params, row_to_raw)?;
        rows.map(|r| r.map_err(anyhow::Error::from).and_then(Agreement::try_from))
            .collect()
    }

    /// Every agreement, by id.
    pub(crate) fn agreements(&self) -> Result<Vec<Agreement>> {
        self.select("TRUE", [])
    }

    /// The agreement with `peer_key`, if any.
    pub(crate) fn agreement_with(&self, peer_key: &[u8; 32]) -> Result<Option<Agreement>> {
        Ok(self.select("peer_key = ?1", [&peer_key[..]])?.pop())
    }

    /// Stores an active agreement with `peer_key`, or updates the existing
    /// one (new terms, endpoints and signature make a new revision).
    pub(crate) fn upsert_active(
        &self,
        peer_key: &[u8; 32],
        terms: Terms,
        endpoints: &[String],
        origin: Origin,
        now_unix: u64,
        peer_signature: Option<&[u8]>,
    ) -> Result<Agreement> {
        let endpoints_json = serde_json::to_string(endpoints)?;
        self.conn.execute(
            "INSERT INTO agreements (peer_key, state, terms, endpoints, origin, created_unix, revision, peer_signature)
             VALUES (?1, 'active', ?2, ?3, ?4, ?5, 1, ?6)
             ON CONFLICT (peer_key) DO UPDATE SET
                 state = 'active',
                 terms = excluded.terms,
                 endpoints = CASE WHEN excluded.endpoints = '[]' THEN agreements.endpoints ELSE excluded.endpoints END,
                 origin = excluded.origin,
                 peer_signature = COALESCE(excluded.peer_signature, agreements.peer_signature),
                 revision = agreements.revision + 1
             WHERE agreements.state != 'active'
                OR agreements.terms != excluded.terms
                OR agreements.endpoints != excluded.endpoints AND excluded.endpoints != '[]'
                OR agreements.peer_signature IS NOT excluded.peer_signature AND excluded.peer_signature IS NOT NULL",
            params![
                &peer_key[..],
                terms.to_string(),
                endpoints_json,
                origin.as_str(),
                now_unix as i64,
                peer_signature
            ],
        )?;
        self.agreement_with(peer_key)?
            .context("an agreement just written is missing")
    }

    /// Marks an agreement revoked. Returns it, or `None` if no such id.
    pub(crate) fn revoke(&self, id: i64) -> Result<Option<Agreement>> {
        self.conn.execute(
            "UPDATE agreements SET state = 'revoked', revision = revision + 1
             WHERE id = ?1 AND state != 'revoked'",
            params![id],
        )?;
        Ok(self.select("id = ?1", [id])?.pop())
    }

    /// Marks the agreement with `peer_key` revoked (the peer told us).
    pub(crate) fn revoke_peer(&self, peer_key: &[u8; 32]) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE agreements SET state = 'revoked', revision = revision + 1
             WHERE peer_key = ?1 AND state != 'revoked'",
            params![&peer_key[..]],
        )?;
        Ok(n > 0)
    }

    /// Stores a new invite's secret.
    pub(crate) fn add_invite(
        &self,
        secret: &[u8; 16],
        terms: Terms,
        expiry_unix: u64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO invites (secret, terms, expiry_unix) VALUES (?1, ?2, ?3)",
            params![&secret[..], terms.to_string(), expiry_unix as i64],
        )?;
        Ok(())
    }

    /// Uses an invite once: atomically marks it used by `peer_key` if it
    /// exists, is unused and unexpired. Returns its terms, or why not.
    pub(crate) fn use_invite(
        &self,
        secret: &[u8],
        peer_key: &[u8; 32],
        now_unix: u64,
    ) -> Result<Result<Terms, InviteRefusal>> {
        let row: Option<(String, i64, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT terms, expiry_unix, used_unix FROM invites WHERE secret = ?1",
                params![secret],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((terms, expiry, used)) = row else {
            return Ok(Err(InviteRefusal::Unknown));
        };
        if used.is_some() {
            return Ok(Err(InviteRefusal::Used));
        }
        if now_unix as i64 >= expiry {
            return Ok(Err(InviteRefusal::Expired));
        }
        let n = self.conn.execute(
            "UPDATE invites SET used_unix = ?2, used_by = ?3 WHERE secret = ?1 AND used_unix IS NULL",
            params![secret, now_unix as i64, &peer_key[..]],
        )?;
        if n == 0 {
            return Ok(Err(InviteRefusal::Used));
        }
        let terms = terms
            .parse()
            .map_err(|e| anyhow::anyhow!("bad terms in database: {e}"))?;
        Ok(Ok(terms))
    }
}

/// Why an invite secret was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InviteRefusal {
    /// No invite with this secret was made here.
    Unknown,
    /// It was used already; tokens work once.
    Used,
    /// Its time ran out.
    Expired,
}

type RawRow = (
    i64,
    Vec<u8>,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<Vec<u8>>,
);

fn row_to_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

impl TryFrom<RawRow> for Agreement {
    type Error = anyhow::Error;

    fn try_from(
        (id, key, state, terms, endpoints, origin, created, revision, sig): RawRow,
    ) -> Result<Agreement> {
        Ok(Agreement {
            id,
            peer_key: key
                .try_into()
                .map_err(|_| anyhow::anyhow!("agreement {id}: bad peer key in database"))?,
            state: AgreementState::parse(&state)?,
            terms: terms
                .parse()
                .map_err(|e| anyhow::anyhow!("agreement {id}: bad terms in database: {e}"))?,
            endpoints: serde_json::from_str(&endpoints)
                .with_context(|| format!("agreement {id}: bad endpoints in database"))?,
            origin: Origin::parse(&origin)?,
            created_unix: created.max(0) as u64,
            revision: revision.max(0) as u64,
            peer_signature: sig,
        })
    }
}

/// Ledgers (docs/architecture.md, "Ledgers"): one row per agreement's peer,
/// kept after a revocation for the record.
impl Store {
    /// Stores these ledger records in one transaction, replacing each
    /// peer's last.
    pub(crate) fn save_ledgers(&mut self, rows: &[([u8; 32], LedgerRecord)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO ledgers (peer_key, period, period_secs, relayed_for_peer,
                     relayed_by_peer, balance, total_for_peer, total_by_peer,
                     last_check_unix, agreed, peer_agreed, mismatches)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (peer_key) DO UPDATE SET period = ?2, period_secs = ?3,
                     relayed_for_peer = ?4, relayed_by_peer = ?5, balance = ?6,
                     total_for_peer = ?7, total_by_peer = ?8, last_check_unix = ?9,
                     agreed = ?10, peer_agreed = ?11, mismatches = ?12",
            )?;
            for (peer, r) in rows {
                // The bits of each u64, as SQLite stores signed integers.
                let u = |x: u64| x as i64;
                put.execute(params![
                    &peer[..],
                    u(r.period),
                    u(r.period_secs),
                    u(r.relayed_for_peer),
                    u(r.relayed_by_peer),
                    r.balance,
                    u(r.total_for_peer),
                    u(r.total_by_peer),
                    u(r.last_check_unix),
                    r.agreed,
                    r.peer_agreed,
                    u(r.mismatches),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every stored ledger record.
    pub(crate) fn ledgers(&self) -> Result<Vec<([u8; 32], LedgerRecord)>> {
        let mut q = self.conn.prepare(
            "SELECT peer_key, period, period_secs, relayed_for_peer, relayed_by_peer, balance,
                 total_for_peer, total_by_peer, last_check_unix, agreed, peer_agreed, mismatches
             FROM ledgers",
        )?;
        let rows = q.query_map([], |row| {
            let key: Vec<u8> = row.get(0)?;
            let u = |i: usize| row.get::<_, i64>(i).map(|x| x as u64);
            Ok((
                key,
                LedgerRecord {
                    period: u(1)?,
                    period_secs: u(2)?,
                    relayed_for_peer: u(3)?,
                    relayed_by_peer: u(4)?,
                    balance: row.get(5)?,
                    total_for_peer: u(6)?,
                    total_by_peer: u(7)?,
                    last_check_unix: u(8)?,
                    agreed: row.get(9)?,
                    peer_agreed: row.get(10)?,
                    mismatches: u(11)?,
                },
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (key, record) = row?;
            let key: [u8; 32] = key
                .try_into()
                .map_err(|_| anyhow::anyhow!("a ledger row with a key that is not 32 bytes"))?;
            out.push((key, record));
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Proposals over the overlay (docs/protocol.md, "Proposals").
// ---------------------------------------------------------------------------

/// Schema version 3: the `proposals` table, and one id space for
/// agreements and proposals, so `umbra agreements accept|reject|revoke ID`
/// names exactly one row. A proposal takes the next id above both tables; an
/// agreement inserted with the id of a proposal (its table's own next rowid)
/// is moved above both by the trigger, before anyone reads its id.
const MIGRATE_PROPOSALS: &str = "BEGIN;
     CREATE TABLE proposals (
         id INTEGER PRIMARY KEY,
         proposal_id BLOB NOT NULL UNIQUE CHECK (length(proposal_id) = 16),
         direction TEXT NOT NULL CHECK (direction IN ('incoming', 'outgoing')),
         peer_key BLOB NOT NULL CHECK (length(peer_key) = 32),
         state TEXT NOT NULL,
         terms TEXT NOT NULL,
         note TEXT NOT NULL,
         created_unix INTEGER NOT NULL,
         expiry_unix INTEGER NOT NULL,
         updated_unix INTEGER NOT NULL,
         delivered_unix INTEGER,
         reason TEXT,
         message BLOB NOT NULL,
         answer BLOB,
         agreement_id INTEGER
     );
     CREATE INDEX proposals_by_peer ON proposals (peer_key, state);
     CREATE TRIGGER agreements_share_ids_with_proposals AFTER INSERT ON agreements
     WHEN EXISTS (SELECT 1 FROM proposals WHERE id = NEW.id)
     BEGIN
         UPDATE agreements SET id = (
             SELECT max(m) + 1 FROM (
                 SELECT max(id) AS m FROM agreements UNION ALL SELECT max(id) FROM proposals))
         WHERE id = NEW.id;
     END;
     PRAGMA user_version = 3;
     COMMIT;";

/// The next id of the shared id space (see [`MIGRATE_PROPOSALS`]).
const NEXT_SHARED_ID: &str = "(SELECT coalesce(max(m), 0) + 1 FROM (
     SELECT max(id) AS m FROM agreements UNION ALL SELECT max(id) FROM proposals))";

/// Finished proposal records (rejected, refused, expired, withdrawn) kept
/// per direction; older ones are deleted when a new proposal is stored, so
/// no sender can grow the database without bound. Accepted ones stay with
/// their agreement.
pub(crate) const PROPOSAL_RECORDS_KEEP: usize = 200;

/// Which way a proposal went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Another node proposed to this one.
    Incoming,
    /// This node proposed (`umbra propose`).
    Outgoing,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }

    fn parse(s: &str) -> Result<Direction> {
        Ok(match s {
            "incoming" => Direction::Incoming,
            "outgoing" => Direction::Outgoing,
            other => bail!("unknown proposal direction {other:?} in the database"),
        })
    }
}

/// Where a proposal stands: the `state` of its row in `umbra agreements`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProposalState {
    /// Waiting for the receiving operator.
    Pending,
    /// Accepted: the agreement it made is its own row.
    Accepted,
    /// Rejected by the receiving operator.
    Rejected,
    /// Refused by the receiving node's rules (the reason says which).
    Refused,
    /// Its expiry passed while pending.
    Expired,
    /// Replaced by a newer proposal between the same two nodes.
    Withdrawn,
}

impl ProposalState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProposalState::Pending => "pending",
            ProposalState::Accepted => "accepted",
            ProposalState::Rejected => "rejected",
            ProposalState::Refused => "refused",
            ProposalState::Expired => "expired",
            ProposalState::Withdrawn => "withdrawn",
        }
    }

    fn parse(s: &str) -> Result<ProposalState> {
        Ok(match s {
            "pending" => ProposalState::Pending,
            "accepted" => ProposalState::Accepted,
            "rejected" => ProposalState::Rejected,
            "refused" => ProposalState::Refused,
            "expired" => ProposalState::Expired,
            "withdrawn" => ProposalState::Withdrawn,
            other => bail!("unknown proposal state {other:?} in the database"),
        })
    }
}

/// One stored proposal, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProposalRecord {
    /// Local id, from the id space agreements share.
    pub(crate) id: i64,
    /// The proposal's own id, the same on both nodes.
    pub(crate) proposal_id: [u8; 16],
    /// Which way it went.
    pub(crate) direction: Direction,
    /// The other node: the proposer of an incoming proposal, the target of
    /// an outgoing one.
    pub(crate) peer_key: [u8; 32],
    /// Where it stands.
    pub(crate) state: ProposalState,
    /// The terms: an outgoing one's with this side's own limits.
    pub(crate) terms: Terms,
    /// The proposer's note.
    pub(crate) note: String,
    /// When the proposer made it (unix seconds).
    pub(crate) created_unix: u64,
    /// When it expires here (unix seconds).
    pub(crate) expiry_unix: u64,
    /// When its state last changed (unix seconds).
    pub(crate) updated_unix: u64,
    /// Outgoing: when the receiving node said it holds it.
    pub(crate) delivered_unix: Option<u64>,
    /// A refusal's reason (`Refusal::as_str`).
    pub(crate) reason: Option<String>,
    /// The signed proposal, as sent or received.
    pub(crate) message: Vec<u8>,
    /// The signed answer that settled it, as sent or received.
    pub(crate) answer: Option<Vec<u8>>,
    /// The agreement an accept made.
    pub(crate) agreement_id: Option<i64>,
}

/// A proposal to store, before it has an id.
#[derive(Debug, Clone)]
pub(crate) struct NewProposal<'a> {
    pub(crate) proposal_id: [u8; 16],
    pub(crate) direction: Direction,
    pub(crate) peer_key: [u8; 32],
    pub(crate) terms: Terms,
    pub(crate) note: &'a str,
    pub(crate) created_unix: u64,
    pub(crate) expiry_unix: u64,
    pub(crate) message: &'a [u8],
}

/// How a proposal was settled, for [`Store::settle_proposal`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settlement<'a> {
    pub(crate) state: ProposalState,
    pub(crate) reason: Option<&'a str>,
    pub(crate) answer: Option<&'a [u8]>,
    pub(crate) agreement_id: Option<i64>,
}

const PROPOSAL_COLUMNS: &str = "id, proposal_id, direction, peer_key, state, terms, note,
     created_unix, expiry_unix, updated_unix, delivered_unix, reason, message, answer, agreement_id";

fn proposal_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ProposalRecord>> {
    let id: i64 = r.get(0)?;
    let pid: Vec<u8> = r.get(1)?;
    let direction: String = r.get(2)?;
    let key: Vec<u8> = r.get(3)?;
    let state: String = r.get(4)?;
    let terms: String = r.get(5)?;
    let unix = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    let (created_unix, expiry_unix, updated_unix) = (unix(7)?, unix(8)?, unix(9)?);
    let delivered: Option<i64> = r.get(10)?;
    let (note, reason, message, answer, agreement_id) =
        (r.get(6)?, r.get(11)?, r.get(12)?, r.get(13)?, r.get(14)?);
    Ok((|| {
        Ok(ProposalRecord {
            id,
            proposal_id: pid
                .try_into()
                .map_err(|_| anyhow::anyhow!("proposal {id}: bad proposal id in database"))?,
            direction: Direction::parse(&direction)?,
            peer_key: key
                .try_into()
                .map_err(|_| anyhow::anyhow!("proposal {id}: bad peer key in database"))?,
            state: ProposalState::parse(&state)?,
            terms: terms
                .parse()
                .map_err(|e| anyhow::anyhow!("proposal {id}: bad terms in database: {e}"))?,
            note,
            created_unix,
            expiry_unix,
            updated_unix,
            delivered_unix: delivered.map(|d| d.max(0) as u64),
            reason,
            message,
            answer,
            agreement_id,
        })
    })())
}

impl Store {
    /// The proposals matching `filter` (an SQL condition on `params`), by id.
    fn select_proposals(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<ProposalRecord>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE {filter} ORDER BY id"
        ))?;
        let rows = stmt.query_map(params, proposal_from_row)?;
        rows.map(|r| r.map_err(anyhow::Error::from).and_then(|r| r))
            .collect()
    }

    /// Every proposal, both ways, by id.
    pub(crate) fn proposals(&self) -> Result<Vec<ProposalRecord>> {
        self.select_proposals("TRUE", [])
    }

    /// The proposal with local id `id`.
    pub(crate) fn proposal(&self, id: i64) -> Result<Option<ProposalRecord>> {
        Ok(self.select_proposals("id = ?1", [id])?.pop())
    }

    /// The proposal with the proposal id `pid`.
    pub(crate) fn proposal_by_pid(&self, pid: &[u8; 16]) -> Result<Option<ProposalRecord>> {
        Ok(self.select_proposals("proposal_id = ?1", [&pid[..]])?.pop())
    }

    /// The pending proposal with `peer`, either way, if any.
    pub(crate) fn pending_proposal_with(&self, peer: &[u8; 32]) -> Result<Option<ProposalRecord>> {
        Ok(self
            .select_proposals("peer_key = ?1 AND state = 'pending'", [&peer[..]])?
            .pop())
    }

    /// How many incoming proposals wait for the operator.
    pub(crate) fn pending_incoming(&self) -> Result<usize> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM proposals WHERE direction = 'incoming' AND state = 'pending'",
            [],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as usize)
    }

    /// Stores a new pending proposal. A pending one between the same two
    /// nodes the same way is withdrawn (a newer proposal replaces it), and
    /// finished records past [`PROPOSAL_RECORDS_KEEP`] that way are deleted,
    /// in the same transaction.
    pub(crate) fn add_proposal(
        &self,
        p: &NewProposal<'_>,
        now_unix: u64,
    ) -> Result<ProposalRecord> {
        let tx = self.conn.unchecked_transaction()?;
        let direction = p.direction.as_str();
        tx.execute(
            "UPDATE proposals SET state = 'withdrawn', updated_unix = ?3
             WHERE peer_key = ?1 AND direction = ?2 AND state = 'pending'",
            params![&p.peer_key[..], direction, now_unix as i64],
        )?;
        tx.execute(
            &format!(
                "INSERT INTO proposals (id, proposal_id, direction, peer_key, state, terms, note,
                     created_unix, expiry_unix, updated_unix, message)
                 VALUES ({NEXT_SHARED_ID}, ?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?7, ?8, ?9)"
            ),
            params![
                &p.proposal_id[..],
                direction,
                &p.peer_key[..],
                p.terms.to_string(),
                p.note,
                p.created_unix as i64,
                p.expiry_unix as i64,
                now_unix as i64,
                p.message,
            ],
        )?;
        tx.execute(
            "DELETE FROM proposals WHERE direction = ?1
                 AND state IN ('rejected', 'refused', 'expired', 'withdrawn')
                 AND id NOT IN (
                     SELECT id FROM proposals WHERE direction = ?1
                         AND state IN ('rejected', 'refused', 'expired', 'withdrawn')
                     ORDER BY updated_unix DESC, id DESC LIMIT ?2)",
            params![direction, PROPOSAL_RECORDS_KEEP as i64],
        )?;
        tx.commit()?;
        self.proposal_by_pid(&p.proposal_id)?
            .context("a proposal just written is missing")
    }

    /// Settles a pending proposal (or, for an accept, a withdrawn or expired
    /// outgoing one: its proposer did sign those terms, and the other side
    /// accepted before its own clock said it expired). Returns whether it was open
    /// to this: a proposal settled already is left as it is.
    pub(crate) fn settle_proposal(
        &self,
        id: i64,
        how: Settlement<'_>,
        now_unix: u64,
    ) -> Result<bool> {
        let open = if how.state == ProposalState::Accepted {
            "('pending', 'withdrawn', 'expired')"
        } else {
            "('pending')"
        };
        let n = self.conn.execute(
            &format!(
                "UPDATE proposals SET state = ?2, reason = ?3, answer = ?4, agreement_id = ?5,
                     updated_unix = ?6
                 WHERE id = ?1 AND state IN {open}"
            ),
            params![
                id,
                how.state.as_str(),
                how.reason,
                how.answer,
                how.agreement_id,
                now_unix as i64
            ],
        )?;
        Ok(n > 0)
    }

    /// Puts an accepted incoming proposal back to pending (its accept
    /// did not link, and the agreement it made was dropped again).
    pub(crate) fn reopen_proposal(&self, id: i64, now_unix: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE proposals SET state = 'pending', answer = NULL, agreement_id = NULL,
                 updated_unix = ?2
             WHERE id = ?1 AND state = 'accepted'",
            params![id, now_unix as i64],
        )?;
        Ok(())
    }

    /// Notes that the receiving node holds outgoing proposal `id`.
    pub(crate) fn proposal_delivered(&self, id: i64, now_unix: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE proposals SET delivered_unix = ?2 WHERE id = ?1 AND delivered_unix IS NULL",
            params![id, now_unix as i64],
        )?;
        Ok(())
    }

    /// Marks pending proposals whose expiry has come `expired`; returns how
    /// many.
    pub(crate) fn expire_proposals(&self, now_unix: u64) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE proposals SET state = 'expired', updated_unix = ?1
             WHERE state = 'pending' AND expiry_unix <= ?1",
            params![now_unix as i64],
        )?)
    }

    /// Deletes outgoing proposal `id` (it could not be sent).
    pub(crate) fn delete_outgoing_proposal(&self, id: i64) -> Result<()> {
        self.conn.execute(
            "DELETE FROM proposals WHERE id = ?1 AND direction = 'outgoing'",
            params![id],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> Terms {
        "50GiB/30d".parse().expect("terms")
    }

    #[test]
    fn agreements_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("umbra.db");
        let key = [7u8; 32];
        {
            let s = Store::open(&path).expect("open");
            let a = s
                .upsert_active(
                    &key,
                    terms(),
                    &["198.18.0.1:443".into()],
                    Origin::Invite,
                    100,
                    Some(&[1; 64]),
                )
                .expect("insert");
            assert_eq!(a.revision, 1);
            // Same again: no new revision.
            let a2 = s
                .upsert_active(
                    &key,
                    terms(),
                    &["198.18.0.1:443".into()],
                    Origin::Invite,
                    200,
                    None,
                )
                .expect("again");
            assert_eq!(a2.revision, 1);
            assert_eq!(a2.peer_signature.as_deref(), Some(&[1u8; 64][..]));
        }
        let s = Store::open(&path).expect("reopen");
        let all = s.agreements().expect("list");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].peer_key, key);
        assert_eq!(all[0].state, AgreementState::Active);
        assert_eq!(all[0].endpoints, vec!["198.18.0.1:443".to_string()]);
        let r = s.revoke(all[0].id).expect("revoke").expect("exists");
        assert_eq!(r.state, AgreementState::Revoked);
        assert_eq!(r.revision, 2);
        assert!(s.revoke(999).expect("revoke missing").is_none());
    }

    #[test]
    fn invites_work_once_and_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("umbra.db")).expect("open");
        let secret = [3u8; 16];
        s.add_invite(&secret, terms(), 1000).expect("add");
        assert_eq!(
            s.use_invite(&[9; 16], &[1; 32], 10).expect("q"),
            Err(InviteRefusal::Unknown)
        );
        assert_eq!(s.use_invite(&secret, &[1; 32], 10).expect("q"), Ok(terms()));
        assert_eq!(
            s.use_invite(&secret, &[2; 32], 11).expect("q"),
            Err(InviteRefusal::Used)
        );
        let late = [4u8; 16];
        s.add_invite(&late, terms(), 1000).expect("add");
        assert_eq!(
            s.use_invite(&late, &[1; 32], 1000).expect("q"),
            Err(InviteRefusal::Expired)
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("umbra.db");
        drop(Store::open(&path).expect("open"));
        let c = Connection::open(&path).expect("raw");
        c.pragma_update(None, "user_version", 99).expect("bump");
        drop(c);
        let err = Store::open(&path).expect_err("newer schema");
        assert!(format!("{err:#}").contains("upgrade umbra"));
    }

    #[test]
    fn ledgers_survive_reopen_to_the_last_bit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("umbra.db");
        let full = LedgerRecord {
            period: u64::MAX,
            period_secs: 30 * 86_400,
            relayed_for_peer: u64::MAX,
            relayed_by_peer: 1,
            balance: i64::MIN,
            total_for_peer: u64::MAX - 1,
            total_by_peer: 12,
            last_check_unix: 1_800_000_000,
            agreed: Some(false),
            peer_agreed: None,
            mismatches: 3,
        };
        {
            let mut s = Store::open(&path).expect("open");
            s.save_ledgers(&[([1; 32], LedgerRecord::default()), ([2; 32], full)])
                .expect("save");
            // A second save replaces the row.
            let again = LedgerRecord { balance: 5, ..full };
            s.save_ledgers(&[([1; 32], again)]).expect("save");
        }
        let s = Store::open(&path).expect("reopen");
        let mut rows = s.ledgers().expect("load");
        rows.sort_by_key(|(k, _)| *k);
        assert_eq!(
            rows,
            vec![
                ([1; 32], LedgerRecord { balance: 5, ..full }),
                ([2; 32], full)
            ]
        );
    }

    fn new_proposal<'a>(
        pid: u8,
        direction: Direction,
        peer: u8,
        message: &'a [u8],
    ) -> NewProposal<'a> {
        NewProposal {
            proposal_id: [pid; 16],
            direction,
            peer_key: [peer; 32],
            terms: terms(),
            note: "hi",
            created_unix: 100,
            expiry_unix: 1000,
            message,
        }
    }

    #[test]
    fn agreements_and_proposals_share_one_id_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("umbra.db")).expect("open");
        let a1 = s
            .upsert_active(&[1; 32], terms(), &[], Origin::Config, 10, None)
            .expect("agreement");
        let p2 = s
            .add_proposal(&new_proposal(1, Direction::Incoming, 9, b"m"), 10)
            .expect("proposal");
        let p3 = s
            .add_proposal(&new_proposal(2, Direction::Outgoing, 8, b"m"), 10)
            .expect("proposal");
        // The agreements table's own next rowid would be 2, a proposal's.
        let a4 = s
            .upsert_active(&[2; 32], terms(), &[], Origin::Proposal, 10, None)
            .expect("agreement");
        let a5 = s
            .upsert_active(&[3; 32], terms(), &[], Origin::Invite, 10, None)
            .expect("agreement");
        let p6 = s
            .add_proposal(&new_proposal(3, Direction::Incoming, 7, b"m"), 10)
            .expect("proposal");
        let ids = [a1.id, p2.id, p3.id, a4.id, a5.id, p6.id];
        assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
        assert_eq!(a4.origin, Origin::Proposal);
        assert_eq!(
            s.agreement_with(&[2; 32]).expect("q").map(|a| a.id),
            Some(4)
        );
        // And after a reopen, with the trigger in the file.
        drop(s);
        let s = Store::open(&dir.path().join("umbra.db")).expect("reopen");
        let a7 = s
            .upsert_active(&[4; 32], terms(), &[], Origin::Config, 10, None)
            .expect("agreement");
        assert_eq!(a7.id, 7);
        assert_eq!(s.proposals().expect("list").len(), 3);
    }

    #[test]
    fn a_newer_proposal_withdraws_the_pending_one_and_settling_happens_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("umbra.db")).expect("open");
        let first = s
            .add_proposal(&new_proposal(1, Direction::Incoming, 9, b"one"), 10)
            .expect("add");
        assert_eq!(s.pending_incoming().expect("count"), 1);
        let second = s
            .add_proposal(&new_proposal(2, Direction::Incoming, 9, b"two"), 11)
            .expect("add");
        assert_eq!(s.pending_incoming().expect("count"), 1);
        let old = s.proposal(first.id).expect("q").expect("kept");
        assert_eq!(old.state, ProposalState::Withdrawn);
        assert_eq!(
            s.pending_proposal_with(&[9; 32]).expect("q").map(|p| p.id),
            Some(second.id)
        );
        let reject = Settlement {
            state: ProposalState::Rejected,
            reason: None,
            answer: Some(b"no"),
            agreement_id: None,
        };
        assert!(s.settle_proposal(second.id, reject, 12).expect("settle"));
        assert!(!s.settle_proposal(second.id, reject, 13).expect("again"));
        let got = s.proposal(second.id).expect("q").expect("kept");
        assert_eq!(got.state, ProposalState::Rejected);
        assert_eq!(got.answer.as_deref(), Some(&b"no"[..]));
        assert_eq!(got.message, b"two");
        // The same proposal id twice is refused by the database itself.
        assert!(
            s.add_proposal(&new_proposal(2, Direction::Incoming, 9, b"x"), 14)
                .is_err()
        );
    }

    #[test]
    fn pending_proposals_expire_and_finished_records_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("umbra.db")).expect("open");
        let p = s
            .add_proposal(&new_proposal(1, Direction::Incoming, 9, b"m"), 10)
            .expect("add");
        assert_eq!(s.expire_proposals(999).expect("expire"), 0);
        assert_eq!(s.expire_proposals(1000).expect("expire"), 1);
        assert_eq!(
            s.proposal(p.id).expect("q").map(|p| p.state),
            Some(ProposalState::Expired)
        );
        // One sender replacing its proposal over and over leaves at most
        // PROPOSAL_RECORDS_KEEP finished records and one pending.
        for i in 0..(PROPOSAL_RECORDS_KEEP as u32 + 50) {
            let mut np = new_proposal(0, Direction::Incoming, 5, b"m");
            np.proposal_id[..4].copy_from_slice(&(i + 10).to_be_bytes());
            s.add_proposal(&np, 20 + u64::from(i)).expect("add");
        }
        let all = s.proposals().expect("list");
        let pending = all
            .iter()
            .filter(|p| p.state == ProposalState::Pending)
            .count();
        assert_eq!(pending, 1);
        assert_eq!(all.len(), PROPOSAL_RECORDS_KEEP + 1);
        // An accept stays with its agreement; a reopen puts it back.
        let last = all.last().expect("one").clone();
        let accept = Settlement {
            state: ProposalState::Accepted,
            reason: None,
            answer: Some(b"yes"),
            agreement_id: Some(1),
        };
        assert!(s.settle_proposal(last.id, accept, 30).expect("settle"));
        s.reopen_proposal(last.id, 31).expect("reopen");
        let back = s.proposal(last.id).expect("q").expect("kept");
        assert_eq!(back.state, ProposalState::Pending);
        assert_eq!(back.answer, None);
        s.proposal_delivered(last.id, 32).expect("delivered");
        assert_eq!(
            s.proposal(last.id)
                .expect("q")
                .and_then(|p| p.delivered_unix),
            Some(32)
        );
    }

    #[test]
    fn a_version_2_database_is_migrated_and_keeps_its_agreements() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("umbra.db");
        {
            let c = Connection::open(&path).expect("raw");
            c.execute_batch(
                "CREATE TABLE agreements (
                     id INTEGER PRIMARY KEY,
                     peer_key BLOB NOT NULL UNIQUE CHECK (length(peer_key) = 32),
                     state TEXT NOT NULL, terms TEXT NOT NULL, endpoints TEXT NOT NULL,
                     origin TEXT NOT NULL, created_unix INTEGER NOT NULL,
                     revision INTEGER NOT NULL, peer_signature BLOB);
                 CREATE TABLE invites (secret BLOB PRIMARY KEY, terms TEXT NOT NULL,
                     expiry_unix INTEGER NOT NULL, used_unix INTEGER, used_by BLOB);
                 CREATE TABLE graph_cache (id INTEGER PRIMARY KEY CHECK (id = 1),
                     saved_unix INTEGER NOT NULL, records BLOB NOT NULL);
                 PRAGMA user_version = 2;",
            )
            .expect("a version 2 database");
            c.execute(
                "INSERT INTO agreements VALUES (1, ?1, 'active', '50GiB/30d', '[]', 'invite', 5, 1, NULL)",
                [&[7u8; 32][..]],
            )
            .expect("an agreement");
        }
        let s = Store::open(&path).expect("migrates");
        let all = s.agreements().expect("list");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].peer_key, [7; 32]);
        let p = s
            .add_proposal(&new_proposal(1, Direction::Outgoing, 9, b"m"), 10)
            .expect("add");
        assert_eq!(p.id, 2);
    }
}
