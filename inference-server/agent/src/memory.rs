//! Short-term and episodic memory of agents, in one SQLite file that survives restarts.
//!
//! - Short-term: the turns of a conversation (the goal and the final answer of each run),
//!   recalled newest first within a turn count and a token budget.
//! - Episodic: a summary written at the end of every run, recalled on later runs of the same
//!   conversation or the same user.
//!
//! Long-term memory (facts recalled by similarity) lives in a KnowledgeBase; see
//! [`hearth_knowledge::KnowledgeBase::remember`].

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};

use super::llm::Message;

/// Why memory could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("agent memory: {0}")]
pub struct MemoryError(String);

fn db_error(what: &str, e: rusqlite::Error) -> MemoryError {
    MemoryError(format!("{what}: {e}"))
}

/// One remembered run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Episode {
    /// The conversation it belonged to.
    pub conversation: String,
    /// What happened.
    pub summary: String,
    /// Unix seconds.
    pub at: u64,
}

/// The memory file.
pub struct MemoryStore {
    conn: Mutex<Connection>,
}

/// Rough token count of a text (about four characters a token), used only to keep recalled
/// turns within a budget; the model's own counts bound the run.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4) + 4
}

impl MemoryStore {
    /// Opens (creating) the memory file `dir/agent-memory.sqlite`.
    pub fn open(dir: &Path) -> Result<Self, MemoryError> {
        std::fs::create_dir_all(dir).map_err(|e| MemoryError(format!("cannot create {}: {e}", dir.display())))?;
        let conn = Connection::open(dir.join("agent-memory.sqlite")).map_err(|e| db_error("open", e))?;
        Self::init(conn)
    }

    /// A memory that lives only as long as the process (tests, and agents without a data
    /// directory).
    pub fn in_memory() -> Result<Self, MemoryError> {
        Self::init(Connection::open_in_memory().map_err(|e| db_error("open", e))?)
    }

    fn init(conn: Connection) -> Result<Self, MemoryError> {
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS turns (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 agent TEXT NOT NULL, conversation TEXT NOT NULL,
                 role TEXT NOT NULL, content TEXT NOT NULL, at INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (agent, conversation, seq);
             CREATE TABLE IF NOT EXISTS episodes (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 agent TEXT NOT NULL, conversation TEXT NOT NULL, user TEXT,
                 summary TEXT NOT NULL, at INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS episodes_by_conversation ON episodes (agent, conversation, seq);
             CREATE INDEX IF NOT EXISTS episodes_by_user ON episodes (agent, user, seq);",
        )
        .map_err(|e| db_error("create tables", e))?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, MemoryError> {
        self.conn.lock().map_err(|_| MemoryError("the memory lock is poisoned".into()))
    }

    /// Appends turns to a conversation.
    pub fn append_turns(&self, agent: &str, conversation: &str, turns: &[Message]) -> Result<(), MemoryError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction().map_err(|e| db_error("begin", e))?;
        for turn in turns {
            tx.execute(
                "INSERT INTO turns (agent, conversation, role, content, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![agent, conversation, turn.role, turn.content, hearth_openai::unix_now() as i64],
            )
            .map_err(|e| db_error("append a turn", e))?;
        }
        tx.commit().map_err(|e| db_error("commit", e))
    }

    /// The newest turns of a conversation, oldest first: at most `max_turns`, and no more
    /// than `token_budget` (estimated) tokens.
    pub fn recent_turns(
        &self,
        agent: &str,
        conversation: &str,
        max_turns: usize,
        token_budget: usize,
    ) -> Result<Vec<Message>, MemoryError> {
        if max_turns == 0 {
            return Ok(Vec::new());
        }
        let conn = self.lock()?;
        let mut statement = conn
            .prepare_cached(
                "SELECT role, content FROM turns WHERE agent = ?1 AND conversation = ?2 ORDER BY seq DESC LIMIT ?3",
            )
            .map_err(|e| db_error("read turns", e))?;
        let rows = statement
            .query_map(params![agent, conversation, max_turns as i64], |row| {
                Ok(Message { role: row.get(0)?, content: row.get(1)? })
            })
            .map_err(|e| db_error("read turns", e))?;
        let mut turns = Vec::new();
        let mut tokens = 0;
        for row in rows {
            let turn = row.map_err(|e| db_error("read turns", e))?;
            tokens += estimate_tokens(&turn.content);
            if tokens > token_budget {
                break;
            }
            turns.push(turn);
        }
        turns.reverse();
        Ok(turns)
    }

    /// Records the summary of a finished run.
    pub fn add_episode(
        &self,
        agent: &str,
        conversation: &str,
        user: Option<&str>,
        summary: &str,
    ) -> Result<(), MemoryError> {
        self.lock()?
            .execute(
                "INSERT INTO episodes (agent, conversation, user, summary, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![agent, conversation, user, summary, hearth_openai::unix_now() as i64],
            )
            .map_err(|e| db_error("record an episode", e))?;
        Ok(())
    }

    /// The newest `limit` episodes of this conversation or, when a user is given, of any of
    /// that user's conversations; oldest first.
    pub fn episodes(
        &self,
        agent: &str,
        conversation: &str,
        user: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Episode>, MemoryError> {
        let conn = self.lock()?;
        let mut statement = conn
            .prepare_cached(
                "SELECT conversation, summary, at FROM episodes
                 WHERE agent = ?1 AND (conversation = ?2 OR (?3 IS NOT NULL AND user = ?3))
                 ORDER BY seq DESC LIMIT ?4",
            )
            .map_err(|e| db_error("read episodes", e))?;
        let rows = statement
            .query_map(params![agent, conversation, user, limit as i64], |row| {
                Ok(Episode { conversation: row.get(0)?, summary: row.get(1)?, at: row.get::<_, i64>(2)? as u64 })
            })
            .map_err(|e| db_error("read episodes", e))?;
        let mut episodes = rows.collect::<Result<Vec<_>, _>>().map_err(|e| db_error("read episodes", e))?;
        episodes.reverse();
        Ok(episodes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn turn(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    #[test]
    fn turns_come_back_newest_within_count_and_budget_in_order() {
        let memory = MemoryStore::in_memory().unwrap();
        for i in 0..6 {
            memory
                .append_turns("a", "c1", &[turn("user", &format!("q{i}")), turn("assistant", &format!("a{i}"))])
                .unwrap();
        }
        memory.append_turns("a", "other", &[turn("user", "elsewhere")]).unwrap();
        memory.append_turns("b", "c1", &[turn("user", "another agent")]).unwrap();
        let recent = memory.recent_turns("a", "c1", 4, 10_000).unwrap();
        let texts: Vec<&str> = recent.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["q4", "a4", "q5", "a5"]);
        // Each short turn is estimated at 5 tokens: a budget of 12 keeps two.
        assert_eq!(memory.recent_turns("a", "c1", 10, 12).unwrap().len(), 2);
        assert!(memory.recent_turns("a", "c1", 0, 10_000).unwrap().is_empty());
    }

    #[test]
    fn episodes_are_recalled_by_conversation_or_user_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let memory = MemoryStore::open(dir.path()).unwrap();
            memory.add_episode("a", "c1", Some("ann"), "first").unwrap();
            memory.add_episode("a", "c2", Some("ann"), "second").unwrap();
            memory.add_episode("a", "c3", Some("bob"), "bob's").unwrap();
            memory.add_episode("other", "c1", Some("ann"), "other agent").unwrap();
        }
        let memory = MemoryStore::open(dir.path()).unwrap();
        let of = |c, u, n| -> Vec<String> {
            memory.episodes("a", c, u, n).unwrap().into_iter().map(|e| e.summary).collect()
        };
        assert_eq!(of("c1", None, 10), ["first"]);
        assert_eq!(of("new", Some("ann"), 10), ["first", "second"]);
        assert_eq!(of("new", Some("ann"), 1), ["second"]);
        assert_eq!(of("new", Some("bob"), 10), ["bob's"]);
        assert!(of("new", None, 10).is_empty());
    }
}
