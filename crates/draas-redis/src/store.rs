//! [`StateStore`] over Redis: shared by control-plane replicas and workers.
//!
//! Layout (all under `{prefix}`, one hash slot):
//! - `{p}:v:<collection>`: hash key → value;
//! - `{p}:r:<collection>`: hash key → revision;
//! - `{p}:revision`: the store-wide revision counter (a recreated key never
//!   gets back a revision a reader may still hold);
//! - `{p}:log:<name>`: list of a log's kept entries, oldest first;
//!   `{p}:logseq:<name>`: its newest cursor.
//!
//! Writes with preconditions run as Lua scripts, so check-and-write is
//! atomic on the server: no lost update between replicas. Each write call
//! carries a token under which its outcome is kept for a minute
//! (`{p}:once:<token>`), so the retry of a call whose reply was lost (Redis
//! restarting) returns the first outcome instead of writing again. Reads of a value
//! and its revision are one `MULTI`, so a reader never pairs a value with
//! another write's revision.

use async_trait::async_trait;
use draas_core::ports::store::{
    Applied, LogPage, Precondition, Revision, StateStore, StoreError, Versioned, Write,
};
use redis::aio::ConnectionManager;
use redis::{RedisError, Script, Value};

use crate::connection::{is_unavailable, with_retry, RedisSettings};

/// Checks every precondition of a batch (later writes see earlier ones),
/// then applies all of it; or nothing, naming the first failing write.
/// The outcome is kept for a minute under the call's token: a call
/// repeated after a lost reply gets the same outcome and writes nothing
/// again (a compare-and-set that had succeeded must not come back as a
/// conflict, nor a create as "already exists").
const APPLY: &str = r#"
-- KEYS[1]: revision counter; KEYS[2]: token; write i: KEYS[2i+1] value hash, KEYS[2i+2] revision hash
--   (for an append: KEYS[2i+1] the log's cursor counter, KEYS[2i+2] the log's list)
-- ARGV per write (5): op (put|del|app), field, precondition (none|absent|rev), revision (app: capacity), value
local done = redis.call('GET', KEYS[2])
if done then return cjson.decode(done) end
local n = (#KEYS - 2) / 2
local counter = tonumber(redis.call('GET', KEYS[1]) or '0')
local seen = {}
local results = {}
local next_rev = counter
local function conflict(i)
  local out = {'conflict', i}
  redis.call('SET', KEYS[2], cjson.encode(out), 'EX', 60)
  return out
end
for i = 1, n do
  local rh = KEYS[2 * i + 2]
  local b = (i - 1) * 5
  local op, field, pre, expected = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  if op ~= 'app' then
    local id = rh .. '\0' .. field
    local current = seen[id]
    if current == nil then
      local r = redis.call('HGET', rh, field)
      if r then current = tonumber(r) else current = false end
    end
    if pre == 'absent' and current ~= false then return conflict(i) end
    if pre == 'rev' and (current == false or current ~= tonumber(expected)) then return conflict(i) end
    if op == 'put' then
      next_rev = next_rev + 1
      seen[id] = next_rev
      results[i] = next_rev
    else
      seen[id] = false
      results[i] = 0
    end
  end
end
next_rev = counter
for i = 1, n do
  local vh, rh = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local b = (i - 1) * 5
  local op, field, value = ARGV[b + 1], ARGV[b + 2], ARGV[b + 5]
  if op == 'put' then
    next_rev = next_rev + 1
    redis.call('HSET', vh, field, value)
    redis.call('HSET', rh, field, next_rev)
  elseif op == 'del' then
    redis.call('HDEL', vh, field)
    redis.call('HDEL', rh, field)
  else
    local cursor = redis.call('INCR', vh)
    redis.call('RPUSH', rh, value)
    local cap = tonumber(ARGV[b + 4])
    if cap == 0 then redis.call('DEL', rh) else redis.call('LTRIM', rh, -cap, -1) end
    results[i] = cursor
  end
end
redis.call('SET', KEYS[1], next_rev)
local out = {'ok'}
for i = 1, n do out[i + 1] = results[i] end
redis.call('SET', KEYS[2], cjson.encode(out), 'EX', 60)
return out
"#;

/// Appends to a capped log; returns the new cursor. Like `APPLY`, a call
/// repeated under the same token returns the first cursor and appends
/// nothing (no duplicate entry in the status buffer).
const APPEND: &str = r#"
local done = redis.call('GET', KEYS[3])
if done then return tonumber(done) end
local cursor = redis.call('INCR', KEYS[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
local cap = tonumber(ARGV[2])
if cap == 0 then redis.call('DEL', KEYS[2]) else redis.call('LTRIM', KEYS[2], -cap, -1) end
redis.call('SET', KEYS[3], cursor, 'EX', 60)
return cursor
"#;

/// Reads a log page: {oldest, newest, entries...}; entry cursors follow on
/// from max(after + 1, oldest).
const READ_LOG: &str = r#"
local newest = tonumber(redis.call('GET', KEYS[1]) or '0')
local len = redis.call('LLEN', KEYS[2])
local oldest = 0
if len > 0 then oldest = newest - len + 1 end
local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local start = after + 1
if start < oldest then start = oldest end
if len == 0 or start > newest or limit == 0 then return {oldest, newest} end
local from = start - oldest
local items = redis.call('LRANGE', KEYS[2], from, from + limit - 1)
local out = {oldest, newest}
for i = 1, #items do out[i + 2] = items[i] end
return out
"#;

/// The script arguments of a precondition.
fn precondition_args(precondition: &Precondition) -> (&'static str, u64) {
    match precondition {
        Precondition::None => ("none", 0),
        Precondition::Absent => ("absent", 0),
        Precondition::Revision(r) => ("rev", r.0),
    }
}

/// The Redis state store. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    settings: RedisSettings,
    connection: ConnectionManager,
    apply: Script,
    append: Script,
    read_log: Script,
}

impl RedisStore {
    /// Connects (retrying in the background when Redis goes away later).
    pub async fn connect(settings: RedisSettings) -> Result<Self, StoreError> {
        let connection = settings.manager().await.map_err(to_store_error)?;
        Ok(Self {
            settings,
            connection,
            apply: Script::new(APPLY),
            append: Script::new(APPEND),
            read_log: Script::new(READ_LOG),
        })
    }

    fn values(&self, collection: &str) -> String {
        self.settings.key(&format!("v:{collection}"))
    }

    fn revisions(&self, collection: &str) -> String {
        self.settings.key(&format!("r:{collection}"))
    }

    /// A fresh token for one call: the key its outcome is kept under.
    fn token(&self) -> String {
        self.settings
            .key(&format!("once:{}", uuid::Uuid::new_v4().simple()))
    }

    /// Appends under an explicit `token`: a second call with the same token
    /// returns the first cursor and appends nothing. (Exposed so tests can
    /// show what a retry after a lost reply does.)
    pub async fn append_once(
        &self,
        token: &str,
        log: &str,
        value: &[u8],
        capacity: usize,
    ) -> Result<u64, StoreError> {
        let token = self.settings.key(&format!("once:{token}"));
        with_retry(|| {
            let mut connection = self.connection.clone();
            let mut invocation = self.append.prepare_invoke();
            invocation
                .key(self.settings.key(&format!("logseq:{log}")))
                .key(self.settings.key(&format!("log:{log}")))
                .key(&token)
                .arg(value)
                .arg(capacity);
            async move { invocation.invoke_async(&mut connection).await }
        })
        .await
        .map_err(to_store_error)
    }
}

fn to_store_error(e: RedisError) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn revision_of(
    collection: &str,
    key: &str,
    raw: Option<String>,
) -> Result<Option<Revision>, StoreError> {
    raw.map(|r| {
        r.parse::<u64>()
            .map(Revision)
            .map_err(|e| StoreError::Corrupt {
                collection: collection.to_string(),
                key: key.to_string(),
                message: format!("revision {r:?}: {e}"),
            })
    })
    .transpose()
}

#[async_trait]
impl StateStore for RedisStore {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Versioned>, StoreError> {
        let (value, revision): (Option<Vec<u8>>, Option<String>) = with_retry(|| {
            let mut connection = self.connection.clone();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .hget(self.values(collection), key)
                .hget(self.revisions(collection), key);
            async move { pipe.query_async(&mut connection).await }
        })
        .await
        .map_err(to_store_error)?;
        match (value, revision_of(collection, key, revision)?) {
            (Some(value), Some(revision)) => Ok(Some(Versioned { value, revision })),
            _ => Ok(None),
        }
    }

    async fn get_many(&self, keys: &[(&str, &str)]) -> Result<Vec<Option<Versioned>>, StoreError> {
        // One MULTI: every value with its revision, from one moment.
        let found: Vec<(Option<Vec<u8>>, Option<String>)> = with_retry(|| {
            let mut connection = self.connection.clone();
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (collection, key) in keys {
                pipe.cmd("HGET")
                    .arg(self.values(collection))
                    .arg(*key)
                    .cmd("HGET")
                    .arg(self.revisions(collection))
                    .arg(*key);
            }
            async move {
                let flat: Vec<Option<Vec<u8>>> = pipe.query_async(&mut connection).await?;
                Ok(flat
                    .chunks(2)
                    .map(|pair| {
                        let revision = pair
                            .get(1)
                            .cloned()
                            .flatten()
                            .map(|r| String::from_utf8_lossy(&r).into_owned());
                        (pair.first().cloned().flatten(), revision)
                    })
                    .collect())
            }
        })
        .await
        .map_err(to_store_error)?;
        keys.iter()
            .zip(found)
            .map(|((collection, key), (value, revision))| {
                Ok(match (value, revision_of(collection, key, revision)?) {
                    (Some(value), Some(revision)) => Some(Versioned { value, revision }),
                    _ => None,
                })
            })
            .collect()
    }

    async fn list(&self, collection: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        type Maps = (
            std::collections::HashMap<String, Vec<u8>>,
            std::collections::HashMap<String, String>,
        );
        let (values, revisions): Maps = with_retry(|| {
            let mut connection = self.connection.clone();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .hgetall(self.values(collection))
                .hgetall(self.revisions(collection));
            async move { pipe.query_async(&mut connection).await }
        })
        .await
        .map_err(to_store_error)?;
        let mut out = Vec::with_capacity(values.len());
        for (key, value) in values {
            if let Some(revision) = revision_of(collection, &key, revisions.get(&key).cloned())? {
                out.push((key, Versioned { value, revision }));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Applied>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.apply.prepare_invoke();
        invocation
            .key(self.settings.key("revision"))
            .key(self.token());
        for write in &writes {
            match write {
                Write::Append {
                    log,
                    value,
                    capacity,
                } => {
                    invocation
                        .key(self.settings.key(&format!("logseq:{log}")))
                        .key(self.settings.key(&format!("log:{log}")))
                        .arg("app")
                        .arg("")
                        .arg("none")
                        .arg(*capacity)
                        .arg(value.as_slice());
                }
                Write::Put {
                    collection,
                    key,
                    value,
                    precondition,
                } => {
                    let (pre, expected) = precondition_args(precondition);
                    invocation
                        .key(self.values(collection))
                        .key(self.revisions(collection))
                        .arg("put")
                        .arg(key)
                        .arg(pre)
                        .arg(expected)
                        .arg(value.as_slice());
                }
                Write::Delete {
                    collection,
                    key,
                    precondition,
                } => {
                    let (pre, expected) = precondition_args(precondition);
                    invocation
                        .key(self.values(collection))
                        .key(self.revisions(collection))
                        .arg("del")
                        .arg(key)
                        .arg(pre)
                        .arg(expected)
                        .arg(&[] as &[u8]);
                }
            }
        }
        let reply: Vec<Value> = with_retry(|| {
            let mut connection = self.connection.clone();
            let invocation = &invocation;
            async move { invocation.invoke_async(&mut connection).await }
        })
        .await
        .map_err(to_store_error)?;
        let status = match reply.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).to_string(),
            Some(Value::SimpleString(s)) => s.clone(),
            other => {
                return Err(StoreError::Backend(format!(
                    "unexpected script reply {other:?}"
                )))
            }
        };
        let number = |v: &Value| match v {
            Value::Int(n) => Some(*n),
            _ => None,
        };
        if status == "conflict" {
            let index = reply.get(1).and_then(number).unwrap_or(1) as usize;
            let (collection, key) = match writes.get(index.saturating_sub(1)) {
                Some(Write::Put {
                    collection, key, ..
                })
                | Some(Write::Delete {
                    collection, key, ..
                }) => (collection.clone(), key.clone()),
                Some(Write::Append { .. }) | None => (String::new(), String::new()),
            };
            return Err(StoreError::Conflict { collection, key });
        }
        writes
            .iter()
            .zip(reply.iter().skip(1))
            .map(|(write, value)| {
                let n = || {
                    number(value).map(|n| n as u64).ok_or_else(|| {
                        StoreError::Backend(format!("unexpected script result {value:?}"))
                    })
                };
                Ok(match write {
                    Write::Put { .. } => Applied::Put(Revision(n()?)),
                    Write::Delete { .. } => Applied::Deleted,
                    Write::Append { .. } => Applied::Appended(n()?),
                })
            })
            .collect()
    }

    async fn append(&self, log: &str, value: Vec<u8>, capacity: usize) -> Result<u64, StoreError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.append_once(&token, log, &value, capacity).await
    }

    async fn read_log(&self, log: &str, after: u64, limit: usize) -> Result<LogPage, StoreError> {
        let reply: Vec<Value> = with_retry(|| {
            let mut connection = self.connection.clone();
            let mut invocation = self.read_log.prepare_invoke();
            invocation
                .key(self.settings.key(&format!("logseq:{log}")))
                .key(self.settings.key(&format!("log:{log}")))
                .arg(after)
                .arg(limit);
            async move { invocation.invoke_async(&mut connection).await }
        })
        .await
        .map_err(to_store_error)?;
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => *n as u64,
            _ => 0,
        };
        let (oldest, newest) = (int(reply.first()), int(reply.get(1)));
        let start = after.saturating_add(1).max(oldest);
        let entries = reply
            .iter()
            .skip(2)
            .enumerate()
            .map(|(i, v)| match v {
                Value::BulkString(bytes) => Ok((start + i as u64, bytes.clone())),
                other => Err(StoreError::Backend(format!(
                    "unexpected log entry {other:?}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LogPage {
            entries,
            oldest,
            newest,
        })
    }
}
