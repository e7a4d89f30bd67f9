//! The embedded vector store for local mode and tests: one SQLite file (WAL journal, full sync)
//! holds every collection durably, and each collection's vectors are searched exactly in memory.
//!
//! SQLite is the source of truth: an upsert or delete is one transaction, so a crash loses no
//! committed write and never leaves half a batch. A collection's search index (dense vectors and an
//! inverted index of sparse terms) is built from the file on first use and kept in step with every
//! committed write. Search is exact: HNSW and quantization parameters are recorded (so the caller
//! can report them) but do not change results, which are what an exhaustive Qdrant search returns.
//! The store holds an exclusive lock on its file while open, so one process owns a directory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::store::{
    ChunkPayload, CollectionInfo, CollectionSpec, Distance, Hit, Point, Query, QueryMode, RRF_K, SparseVector,
    StoreError, VectorStore, prefetch_limit,
};

/// File name of the database inside the store directory.
pub const DATABASE_FILE: &str = "hearth.sqlite";

/// Schema version written to `PRAGMA user_version`; a newer file is refused.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    dimension INTEGER NOT NULL,
    distance TEXT NOT NULL,
    hnsw_m INTEGER NOT NULL,
    ef_construct INTEGER NOT NULL,
    int8_quantization INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS points (
    collection INTEGER NOT NULL REFERENCES collections(id),
    id BLOB NOT NULL,
    source TEXT NOT NULL,
    dense BLOB NOT NULL,
    sparse BLOB NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE INDEX IF NOT EXISTS points_by_source ON points (collection, source);
";

/// The embedded vector store: a directory holding one SQLite database with any number of
/// collections. Cheap to clone; clones share the connection and the in-memory indexes.
#[derive(Clone)]
pub struct EmbeddedStore {
    engine: Arc<Mutex<Engine>>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`. Blocks briefly: call it at start-up or from
    /// `spawn_blocking`. Fails if the store is already open (in another process, or another
    /// `EmbeddedStore` in this one). Calls cancelled by dropping their future may still complete.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create store directory {}: {e}", dir.display())))?;
        let path = dir.join(DATABASE_FILE);
        let conn = open_database(&path)?;
        Ok(Self { engine: Arc::new(Mutex::new(Engine { conn, indexes: HashMap::new() })), path })
    }

    /// Path of the database file.
    pub fn database_path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on the blocking thread pool with the engine locked.
    async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Engine) -> Result<T, StoreError> + Send + 'static,
    {
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || work(&mut lock(&engine)))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

/// Locks the engine. A panic while it was locked may have left an in-memory index half updated
/// (the database itself is transactional), so after one the indexes are dropped and rebuilt from
/// the database on next use.
fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    match engine.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            let mut guard = poisoned.into_inner();
            guard.indexes.clear();
            engine.clear_poison();
            guard
        }
    }
}

fn open_database(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| sqlite_error(&format!("open {}", path.display()), e))?;
    // A point's row is about 2.5 KB at 384 dimensions: 16 KB pages hold six where 4 KB pages hold
    // one (a new file only; an existing one keeps its page size).
    conn.pragma_update(None, "page_size", 16384).map_err(|e| sqlite_error("set page size", e))?;
    // Exclusive locking keeps the WAL index in process memory and holds the file lock from the
    // first transaction until close: a second process cannot open the store and make the
    // in-memory indexes stale. FULL sync makes each commit durable across power loss, not only
    // a process crash.
    conn.busy_timeout(std::time::Duration::from_millis(200)).map_err(|e| sqlite_error("set busy timeout", e))?;
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(|e| sqlite_error("set locking mode", e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| in_use_or(path, e, "set WAL journal mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!("{}: expected journal mode wal, got {mode}", path.display())));
    }
    conn.pragma_update(None, "synchronous", "FULL").map_err(|e| sqlite_error("set synchronous", e))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| in_use_or(path, e, "read schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "{}: schema version {version} is newer than this build's {SCHEMA_VERSION}",
            path.display()
        )));
    }
    // An exclusive transaction takes the write lock now, so a store already open elsewhere is
    // reported at open rather than at the first write.
    conn.execute_batch(&format!("BEGIN EXCLUSIVE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))
        .map_err(|e| in_use_or(path, e, "create schema"))?;
    Ok(conn)
}

fn in_use_or(path: &Path, e: rusqlite::Error, what: &str) -> StoreError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
        StoreError::Backend(format!("{} is already open (by another process or another EmbeddedStore)", path.display()))
    } else {
        sqlite_error(what, e)
    }
}

fn sqlite_error(what: &str, e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {what}: {e}"))
}

/// A collection's row in the database.
#[derive(Debug, Clone)]
struct CollectionRow {
    id: i64,
    name: String,
    dimension: usize,
    distance: Distance,
    hnsw_m: usize,
    ef_construct: usize,
    int8_quantization: bool,
}

impl CollectionRow {
    fn info(&self, points: u64) -> CollectionInfo {
        CollectionInfo {
            name: self.name.clone(),
            dimension: self.dimension,
            distance: self.distance,
            points,
            hnsw_m: self.hnsw_m,
            ef_construct: self.ef_construct,
            int8_quantization: self.int8_quantization,
        }
    }
}

/// The connection and the in-memory indexes of the collections used so far.
struct Engine {
    conn: Connection,
    indexes: HashMap<String, CollectionIndex>,
}

impl Engine {
    fn collection_row(&self, name: &str) -> Result<CollectionRow, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT id, name, dimension, distance, hnsw_m, ef_construct, int8_quantization
                 FROM collections WHERE name = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([name], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, i64>(5)?,
                        row.get::<_, bool>(6)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| sqlite_error("read collection", e))?;
        let Some((id, name, dimension, distance, hnsw_m, ef_construct, int8_quantization)) = row else {
            return Err(StoreError::NoCollection(name.to_string()));
        };
        let distance = Distance::parse(&distance)
            .ok_or_else(|| StoreError::Backend(format!("collection {name}: unknown distance {distance:?}")))?;
        let to_usize = |v: i64, what: &str| {
            usize::try_from(v).map_err(|_| StoreError::Backend(format!("collection {name}: bad {what} {v}")))
        };
        Ok(CollectionRow {
            id,
            dimension: to_usize(dimension, "dimension")?,
            hnsw_m: to_usize(hnsw_m, "hnsw_m")?,
            ef_construct: to_usize(ef_construct, "ef_construct")?,
            distance,
            int8_quantization,
            name,
        })
    }

    /// The collection's row, from its loaded index when there is one.
    fn row(&self, name: &str) -> Result<CollectionRow, StoreError> {
        match self.indexes.get(name) {
            Some(index) => Ok(index.row.clone()),
            None => self.collection_row(name),
        }
    }

    fn count_points(&self, collection_id: i64) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached("SELECT COUNT(*) FROM points WHERE collection = ?1")
            .and_then(|mut stmt| stmt.query_row([collection_id], |row| row.get::<_, i64>(0)))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| sqlite_error("count points", e))
    }

    /// The collection's search index, loading it from the database on first use.
    fn index(&mut self, name: &str) -> Result<&mut CollectionIndex, StoreError> {
        if !self.indexes.contains_key(name) {
            let row = self.collection_row(name)?;
            let index = self.load_index(row)?;
            self.indexes.insert(name.to_string(), index);
        }
        self.indexes.get_mut(name).ok_or_else(|| StoreError::NoCollection(name.to_string()))
    }

    fn load_index(&self, row: CollectionRow) -> Result<CollectionIndex, StoreError> {
        let mut index = CollectionIndex::new(row);
        let mut stmt = self
            .conn
            .prepare("SELECT id, source, dense, sparse FROM points WHERE collection = ?1")
            .map_err(|e| sqlite_error("load collection", e))?;
        let mut rows = stmt.query([index.row.id]).map_err(|e| sqlite_error("load collection", e))?;
        while let Some(r) = rows.next().map_err(|e| sqlite_error("load collection", e))? {
            let id = uuid_from_blob(blob(r, 0)?)?;
            let source: String = r.get(1).map_err(|e| sqlite_error("load collection", e))?;
            let dense = decode_dense(blob(r, 2)?)?;
            let sparse = decode_sparse(blob(r, 3)?)?;
            if dense.len() != index.row.dimension {
                return Err(StoreError::Backend(format!(
                    "collection {}: point {id} has {} dimensions, expected {}",
                    index.row.name,
                    dense.len(),
                    index.row.dimension
                )));
            }
            index.insert(id, source, &dense, &sparse);
        }
        Ok(index)
    }

    fn ensure_collection(&mut self, spec: &CollectionSpec) -> Result<CollectionInfo, StoreError> {
        spec.check()?;
        match self.collection_row(&spec.name) {
            Ok(row) => {
                if row.dimension != spec.dimension {
                    return Err(StoreError::DimensionMismatch {
                        collection: spec.name.clone(),
                        existing: row.dimension,
                        wanted: spec.dimension,
                    });
                }
                let points = self.count_points(row.id)?;
                Ok(row.info(points))
            }
            Err(StoreError::NoCollection(_)) => {
                let to_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
                self.conn
                    .execute(
                        "INSERT INTO collections (name, dimension, distance, hnsw_m, ef_construct, int8_quantization)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![
                            spec.name,
                            to_i64(spec.dimension),
                            spec.distance.as_str(),
                            to_i64(spec.hnsw_m),
                            to_i64(spec.ef_construct),
                            spec.int8_quantization
                        ],
                    )
                    .map_err(|e| sqlite_error("create collection", e))?;
                Ok(self.collection_row(&spec.name)?.info(0))
            }
            Err(e) => Err(e),
        }
    }

    fn upsert(&mut self, collection: &str, points: Vec<Point>) -> Result<(), StoreError> {
        let row = self.row(collection)?;
        // Validate and encode everything before the transaction, so a bad point stores nothing.
        let mut prepared = Vec::with_capacity(points.len());
        for point in points {
            prepared.push(PreparedPoint::new(point, &row)?);
        }
        // Within one batch the last point with an id wins, as in Qdrant.
        let mut last = HashMap::with_capacity(prepared.len());
        for (i, p) in prepared.iter().enumerate() {
            last.insert(p.id, i);
        }
        let prepared: Vec<PreparedPoint> =
            prepared.into_iter().enumerate().filter(|(i, p)| last.get(&p.id) == Some(i)).map(|(_, p)| p).collect();

        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| sqlite_error("begin upsert", e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO points (collection, id, source, dense, sparse, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (collection, id) DO UPDATE SET
                         source = excluded.source, dense = excluded.dense,
                         sparse = excluded.sparse, payload = excluded.payload",
                )
                .map_err(|e| sqlite_error("upsert", e))?;
            for p in &prepared {
                stmt.execute(params![
                    row.id,
                    p.id.as_bytes().as_slice(),
                    p.source,
                    encode_dense(&p.dense),
                    encode_sparse(&p.sparse),
                    p.payload_json
                ])
                .map_err(|e| sqlite_error("upsert", e))?;
            }
        }
        tx.commit().map_err(|e| sqlite_error("commit upsert", e))?;

        if let Some(index) = self.indexes.get_mut(collection) {
            index.remove(prepared.iter().map(|p| p.id));
            for p in prepared {
                index.insert(p.id, p.source, &p.dense, &p.sparse);
            }
        }
        Ok(())
    }

    fn delete_ids(&mut self, collection: &str, ids: &[Uuid]) -> Result<u64, StoreError> {
        let row = self.row(collection)?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| sqlite_error("begin delete", e))?;
        let mut deleted = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM points WHERE collection = ?1 AND id = ?2")
                .map_err(|e| sqlite_error("delete points", e))?;
            let unique: BTreeSet<Uuid> = ids.iter().copied().collect();
            for id in unique {
                let n = stmt
                    .execute(params![row.id, id.as_bytes().as_slice()])
                    .map_err(|e| sqlite_error("delete points", e))?;
                if n > 0 {
                    deleted.push(id);
                }
            }
        }
        tx.commit().map_err(|e| sqlite_error("commit delete", e))?;
        if let Some(index) = self.indexes.get_mut(collection) {
            index.remove(deleted.iter().copied());
        }
        Ok(deleted.len() as u64)
    }

    fn delete_source(&mut self, collection: &str, source: &str) -> Result<u64, StoreError> {
        let row = self.row(collection)?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| sqlite_error("begin delete", e))?;
        let ids = {
            let mut stmt = tx
                .prepare_cached("SELECT id FROM points WHERE collection = ?1 AND source = ?2")
                .map_err(|e| sqlite_error("find source points", e))?;
            let blobs = stmt
                .query_map(params![row.id, source], |r| r.get::<_, Vec<u8>>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| sqlite_error("find source points", e))?;
            blobs.iter().map(|b| uuid_from_blob(b)).collect::<Result<Vec<_>, _>>()?
        };
        tx.execute("DELETE FROM points WHERE collection = ?1 AND source = ?2", params![row.id, source])
            .map_err(|e| sqlite_error("delete source", e))?;
        tx.commit().map_err(|e| sqlite_error("commit delete", e))?;
        if let Some(index) = self.indexes.get_mut(collection) {
            index.remove(ids.iter().copied());
        }
        Ok(ids.len() as u64)
    }

    fn source_points(&self, collection: &str) -> Result<BTreeMap<String, BTreeSet<Uuid>>, StoreError> {
        let row = self.row(collection)?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT source, id FROM points WHERE collection = ?1")
            .map_err(|e| sqlite_error("list sources", e))?;
        let pairs = stmt
            .query_map([row.id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| sqlite_error("list sources", e))?;
        let mut out: BTreeMap<String, BTreeSet<Uuid>> = BTreeMap::new();
        for (source, blob) in pairs {
            out.entry(source).or_default().insert(uuid_from_blob(&blob)?);
        }
        Ok(out)
    }

    fn count(&self, collection: &str) -> Result<u64, StoreError> {
        match self.indexes.get(collection) {
            Some(index) => Ok(index.len() as u64),
            None => {
                let row = self.collection_row(collection)?;
                self.count_points(row.id)
            }
        }
    }

    fn delete_collection(&mut self, collection: &str) -> Result<bool, StoreError> {
        let row = match self.collection_row(collection) {
            Ok(row) => row,
            Err(StoreError::NoCollection(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| sqlite_error("begin delete collection", e))?;
        tx.execute("DELETE FROM points WHERE collection = ?1", [row.id])
            .map_err(|e| sqlite_error("delete collection points", e))?;
        tx.execute("DELETE FROM collections WHERE id = ?1", [row.id])
            .map_err(|e| sqlite_error("delete collection", e))?;
        tx.commit().map_err(|e| sqlite_error("commit delete collection", e))?;
        self.indexes.remove(collection);
        Ok(true)
    }

    fn query(&mut self, collection: &str, query: &Query) -> Result<Vec<Hit>, StoreError> {
        let index = self.index(collection)?;
        query.check(collection, index.row.dimension)?;
        let ranked = index.search(query);
        let collection_id = index.row.id;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT payload FROM points WHERE collection = ?1 AND id = ?2")
            .map_err(|e| sqlite_error("read payload", e))?;
        let mut hits = Vec::with_capacity(ranked.len());
        for (id, score) in ranked {
            let json: String = stmt
                .query_row(params![collection_id, id.as_bytes().as_slice()], |r| r.get(0))
                .map_err(|e| sqlite_error("read payload", e))?;
            let payload: ChunkPayload = serde_json::from_str(&json)
                .map_err(|e| StoreError::Backend(format!("collection {collection}: point {id}: bad payload: {e}")))?;
            hits.push(Hit { id, score, payload });
        }
        Ok(hits)
    }
}

/// A point validated against its collection and ready to write.
struct PreparedPoint {
    id: Uuid,
    source: String,
    dense: Vec<f32>,
    sparse: SparseVector,
    payload_json: String,
}

impl PreparedPoint {
    fn new(point: Point, row: &CollectionRow) -> Result<Self, StoreError> {
        let invalid =
            |msg: String| StoreError::InvalidPoint(format!("collection {}: point {}: {msg}", row.name, point.id));
        if point.dense.len() != row.dimension {
            return Err(invalid(format!(
                "dense vector has the wrong length: expected {}, got {}",
                row.dimension,
                point.dense.len()
            )));
        }
        if point.dense.iter().any(|v| !v.is_finite()) {
            return Err(invalid("dense vector has a non-finite value".to_string()));
        }
        point.sparse.check().map_err(|e| invalid(format!("sparse vector: {e}")))?;
        let payload_json =
            serde_json::to_string(&point.payload).map_err(|e| invalid(format!("payload cannot be serialised: {e}")))?;
        let mut dense = point.dense;
        if row.distance == Distance::Cosine {
            normalize(&mut dense);
        }
        Ok(Self { id: point.id, source: point.payload.source, dense, sparse: point.sparse, payload_json })
    }
}

/// One stored point in a collection's index.
struct Slot {
    id: Uuid,
    /// Index into [`CollectionIndex::source_names`].
    source: u32,
    terms: Box<[u32]>,
}

/// A collection's exact search index: dense vectors in one contiguous array and an inverted index
/// from sparse term to (slot, weight). Slots of deleted points are reused. Source names are
/// interned so a source filter is an array lookup per point.
struct CollectionIndex {
    row: CollectionRow,
    source_names: Vec<Box<str>>,
    source_ids: HashMap<Box<str>, u32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    by_id: HashMap<Uuid, u32>,
    vectors: Vec<f32>,
    postings: HashMap<u32, Vec<(u32, f32)>>,
}

/// A candidate during ranking: its "goodness" (higher is better) and slot.
type Candidate = (f32, u32);

/// Which interned sources a query admits, indexed by source id.
type SourceFilter = Vec<bool>;

impl CollectionIndex {
    fn new(row: CollectionRow) -> Self {
        Self {
            row,
            source_names: Vec::new(),
            source_ids: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            vectors: Vec::new(),
            postings: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Adds a point that is not in the index; `dense` is already normalised for Cosine.
    fn insert(&mut self, id: Uuid, source: String, dense: &[f32], sparse: &SparseVector) {
        let dim = self.row.dimension;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.vectors.resize(self.slots.len() * dim, 0.0);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let at = slot as usize * dim;
        self.vectors[at..at + dim].copy_from_slice(dense);
        for (&term, &weight) in sparse.indices.iter().zip(&sparse.values) {
            self.postings.entry(term).or_default().push((slot, weight));
        }
        let source = match self.source_ids.get(source.as_str()) {
            Some(&source) => source,
            None => {
                let next = u32::try_from(self.source_names.len()).unwrap_or(u32::MAX);
                self.source_names.push(source.clone().into_boxed_str());
                self.source_ids.insert(source.into_boxed_str(), next);
                next
            }
        };
        self.slots[slot as usize] = Some(Slot { id, source, terms: sparse.indices.clone().into_boxed_slice() });
        self.by_id.insert(id, slot);
    }

    /// Removes the points with these ids (absent ones are skipped), cleaning each affected
    /// posting list once.
    fn remove(&mut self, ids: impl Iterator<Item = Uuid>) {
        let mut removed = HashSet::new();
        let mut terms = HashSet::new();
        for id in ids {
            if let Some(slot) = self.by_id.remove(&id)
                && let Some(old) = self.slots[slot as usize].take()
            {
                terms.extend(old.terms.iter().copied());
                removed.insert(slot);
            }
        }
        if removed.is_empty() {
            return;
        }
        for term in terms {
            if let Some(list) = self.postings.get_mut(&term) {
                list.retain(|(slot, _)| !removed.contains(slot));
                if list.is_empty() {
                    self.postings.remove(&term);
                }
            }
        }
        self.free.extend(removed);
    }

    fn id_of(&self, slot: u32) -> Uuid {
        self.slots[slot as usize].as_ref().map(|s| s.id).unwrap_or_default()
    }

    /// Orders candidates best first, ties by ascending id.
    fn rank(&self, candidates: &mut Vec<Candidate>, limit: usize) {
        let cmp =
            |a: &Candidate, b: &Candidate| b.0.total_cmp(&a.0).then_with(|| self.id_of(a.1).cmp(&self.id_of(b.1)));
        if candidates.len() > limit && limit > 0 {
            candidates.select_nth_unstable_by(limit - 1, cmp);
        }
        candidates.truncate(limit);
        candidates.sort_unstable_by(cmp);
    }

    fn source_filter(&self, query: &Query) -> Option<SourceFilter> {
        query.sources.as_ref().map(|sources| {
            let mut allowed = vec![false; self.source_names.len()];
            for id in sources.iter().filter_map(|s| self.source_ids.get(s.as_str())) {
                allowed[*id as usize] = true;
            }
            allowed
        })
    }

    fn passes(slot: &Slot, filter: Option<&SourceFilter>) -> bool {
        filter.is_none_or(|allowed| allowed.get(slot.source as usize).copied().unwrap_or(false))
    }

    /// Dense candidates as (goodness, slot): similarity, or negated distance for Euclid.
    fn dense_candidates(&self, vector: &[f32], filter: Option<&SourceFilter>, limit: usize) -> Vec<Candidate> {
        let dim = self.row.dimension;
        let mut q = vector.to_vec();
        if self.row.distance == Distance::Cosine {
            normalize(&mut q);
        }
        let mut out = Vec::with_capacity(self.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            if !Self::passes(slot, filter) {
                continue;
            }
            let v = &self.vectors[i * dim..(i + 1) * dim];
            let goodness = match self.row.distance {
                Distance::Cosine | Distance::Dot => dot(&q, v),
                Distance::Euclid => -squared_l2(&q, v).sqrt(),
            };
            out.push((goodness, i as u32));
        }
        self.rank(&mut out, limit);
        out
    }

    /// Sparse candidates as (score, slot): Σ query weight × document weight × IDF over shared
    /// terms, IDF = ln(1 + (N − df + 0.5) / (df + 0.5)) over the whole collection (as Qdrant).
    fn sparse_candidates(&self, vector: &SparseVector, filter: Option<&SourceFilter>, limit: usize) -> Vec<Candidate> {
        let n = self.len() as f32;
        let mut scores = vec![0.0f32; self.slots.len()];
        let mut touched = vec![false; self.slots.len()];
        let mut candidates = Vec::new();
        for (term, &weight) in vector.indices.iter().zip(&vector.values) {
            let Some(list) = self.postings.get(term) else { continue };
            let df = list.len() as f32;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            let q = weight * idf;
            for &(slot, w) in list {
                scores[slot as usize] += q * w;
                if !touched[slot as usize] {
                    touched[slot as usize] = true;
                    candidates.push(slot);
                }
            }
        }
        let mut out: Vec<Candidate> = candidates
            .into_iter()
            .filter(|&slot| self.slots[slot as usize].as_ref().is_some_and(|s| Self::passes(s, filter)))
            .map(|slot| (scores[slot as usize], slot))
            .collect();
        self.rank(&mut out, limit);
        out
    }

    /// Runs a checked query; returns (id, score) best first.
    fn search(&self, query: &Query) -> Vec<(Uuid, f32)> {
        let filter = self.source_filter(query);
        let filter = filter.as_ref();
        let threshold = query.score_threshold;
        let euclid = self.row.distance == Distance::Euclid;
        let ranked: Vec<Candidate> = match (query.mode, &query.dense, &query.sparse) {
            (QueryMode::Dense, Some(dense), _) => {
                let mut c = self.dense_candidates(dense, filter, query.top_k);
                // Goodness is the negated distance for Euclid, where the threshold is a maximum.
                if let Some(t) = threshold {
                    let t = if euclid { -t } else { t };
                    c.retain(|(g, _)| *g >= t);
                }
                c.into_iter().map(|(g, s)| (if euclid { -g } else { g }, s)).collect()
            }
            (QueryMode::Sparse, _, Some(sparse)) => {
                let mut c = self.sparse_candidates(sparse, filter, query.top_k);
                if let Some(t) = threshold {
                    c.retain(|(score, _)| *score >= t);
                }
                c
            }
            (QueryMode::Hybrid, Some(dense), Some(sparse)) => {
                let limit = prefetch_limit(query.top_k);
                let lists =
                    [self.dense_candidates(dense, filter, limit), self.sparse_candidates(sparse, filter, limit)];
                let mut fused: HashMap<u32, f32> = HashMap::new();
                for list in &lists {
                    for (rank, (_, slot)) in list.iter().enumerate() {
                        *fused.entry(*slot).or_default() += 1.0 / (RRF_K + rank) as f32;
                    }
                }
                let mut c: Vec<Candidate> = fused.into_iter().map(|(slot, score)| (score, slot)).collect();
                if let Some(t) = threshold {
                    c.retain(|(score, _)| *score >= t);
                }
                self.rank(&mut c, query.top_k);
                c
            }
            // `Query::check` guarantees the vectors a mode needs.
            _ => Vec::new(),
        };
        ranked.into_iter().map(|(score, slot)| (self.id_of(slot), score)).collect()
    }
}

impl VectorStore for EmbeddedStore {
    async fn ensure_collection(&self, spec: &CollectionSpec) -> Result<CollectionInfo, StoreError> {
        let spec = spec.clone();
        self.run(move |e| e.ensure_collection(&spec)).await
    }

    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<(), StoreError> {
        let collection = collection.to_string();
        self.run(move |e| e.upsert(&collection, points)).await
    }

    async fn delete_points(&self, collection: &str, ids: &[Uuid]) -> Result<u64, StoreError> {
        let collection = collection.to_string();
        let ids = ids.to_vec();
        self.run(move |e| e.delete_ids(&collection, &ids)).await
    }

    async fn delete_source(&self, collection: &str, source: &str) -> Result<u64, StoreError> {
        let collection = collection.to_string();
        let source = source.to_string();
        self.run(move |e| e.delete_source(&collection, &source)).await
    }

    async fn source_points(&self, collection: &str) -> Result<BTreeMap<String, BTreeSet<Uuid>>, StoreError> {
        let collection = collection.to_string();
        self.run(move |e| e.source_points(&collection)).await
    }

    async fn query(&self, collection: &str, query: &Query) -> Result<Vec<Hit>, StoreError> {
        let collection = collection.to_string();
        let query = query.clone();
        self.run(move |e| e.query(&collection, &query)).await
    }

    async fn count(&self, collection: &str) -> Result<u64, StoreError> {
        let collection = collection.to_string();
        self.run(move |e| e.count(&collection)).await
    }

    async fn delete_collection(&self, collection: &str) -> Result<bool, StoreError> {
        let collection = collection.to_string();
        self.run(move |e| e.delete_collection(&collection)).await
    }
}

/// Scales `v` to unit length (a zero vector stays zero, as in Qdrant).
fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > f32::EPSILON {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Dot product with eight accumulators, so the compiler can vectorise it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() - a.len() % 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            *acc += x * y;
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Squared Euclidean distance, vectorisable like [`dot`].
fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() - a.len() % 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            let d = x - y;
            *acc += d * d;
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| (x - y) * (x - y)).sum();
    acc.iter().sum::<f32>() + tail
}

fn encode_dense(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode_dense(bytes: &[u8]) -> Result<Vec<f32>, StoreError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(StoreError::Backend(format!("dense vector blob of {} bytes", bytes.len())));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn encode_sparse(v: &SparseVector) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 8);
    for (i, w) in v.indices.iter().zip(&v.values) {
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

fn decode_sparse(bytes: &[u8]) -> Result<SparseVector, StoreError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(StoreError::Backend(format!("sparse vector blob of {} bytes", bytes.len())));
    }
    let mut v = SparseVector::default();
    for c in bytes.chunks_exact(8) {
        v.indices.push(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        v.values.push(f32::from_le_bytes([c[4], c[5], c[6], c[7]]));
    }
    Ok(v)
}

/// Column `i` of `row` as a blob, without copying it.
fn blob<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r [u8], StoreError> {
    let value = row.get_ref(i).map_err(|e| sqlite_error("read column", e))?;
    value.as_blob().map_err(|e| StoreError::Backend(format!("sqlite: column {i} is not a blob: {e}")))
}

fn uuid_from_blob(bytes: &[u8]) -> Result<Uuid, StoreError> {
    Uuid::from_slice(bytes).map_err(|e| StoreError::Backend(format!("bad point id blob: {e}")))
}
