//! The Lua scripts: each a step that must be atomic. Key names built here follow `keys.rs`.

use redis::Script;

/// Numbers, keeps and delivers one publication.
/// KEYS: meta, stream. ARGV: epoch if the channel has none, history size, ttl ms, meta ttl
/// ms, user, data, topic, the publishing node's clock in ms since the Unix epoch (the
/// payload's stamp, `payload.rs`). Returns `{epoch, offset}`.
const PUBLISH: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
local top = redis.call('HINCRBY', KEYS[1], 'top', 1)
if tonumber(ARGV[2]) > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], string.format('%d-0', top),
    'u', ARGV[5], 'd', ARGV[6], 't', string.format('%d', now))
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[7], cmsgpack.pack({0, epoch, top, ARGV[5], ARGV[6], tonumber(ARGV[8])}))
return {epoch, top}
"#;

/// Reads a channel's history, dropping publications past their time first.
/// KEYS: meta, stream. ARGV: epoch if the channel has none, after ('' for from the oldest),
/// limit, ttl ms, meta ttl ms. Returns `{epoch, top, first_kept, offset, user, data, ...}`.
const HISTORY: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local top = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
else
  top = tonumber(redis.call('HGET', KEYS[1], 'top') or '0')
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[4])
local first = nil
while true do
  local batch = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 64)
  if #batch == 0 then break end
  local last = nil
  for _, e in ipairs(batch) do
    local at = 0
    local f = e[2]
    for i = 1, #f, 2 do
      if f[i] == 't' then at = tonumber(f[i + 1]) end
    end
    if at > cutoff then first = e[1] break end
    last = e[1]
  end
  if first then
    redis.call('XTRIM', KEYS[2], 'MINID', first)
    break
  end
  redis.call('XTRIM', KEYS[2], 'MINID',
    string.format('%d-0', tonumber(string.match(last, '^(%d+)-')) + 1))
end
local first_kept = top + 1
if first then first_kept = tonumber(string.match(first, '^(%d+)-')) end
local out = {epoch, top, first_kept}
local limit = tonumber(ARGV[3])
if limit > 0 and first then
  local start = '-'
  if ARGV[2] ~= '' then start = string.format('%d-0', tonumber(ARGV[2]) + 1) end
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', limit)) do
    local user, data = '', ''
    local f = e[2]
    for i = 1, #f, 2 do
      if f[i] == 'u' then user = f[i + 1] elseif f[i] == 'd' then data = f[i + 1] end
    end
    out[#out + 1] = tonumber(string.match(e[1], '^(%d+)-'))
    out[#out + 1] = user
    out[#out + 1] = data
  end
end
return out
"#;

/// Adds a presence entry of this node.
/// KEYS: presence hash, node's presence set, nodes set. ARGV: field, entry, member, node.
/// Returns 1 if the entry is new.
const PRESENCE_ADD: &str = r#"
local new = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return new
"#;

/// Removes a presence entry of this node. KEYS: presence hash, node's presence set.
/// ARGV: field, member.
const PRESENCE_REMOVE: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"#;

/// Removes every presence entry of a node and publishes their leaves (`[2, entry, node]`,
/// `payload.rs`), in one step: of the
/// node ARGV[2], or (ARGV[2] = '') of every node whose lease has expired. ARGV[1]: the key
/// prefix. Returns how many entries were removed.
const SWEEP: &str = r#"
local prefix = ARGV[1]
local function clear(node)
  local index = prefix .. 'node:' .. node .. ':presence'
  local removed = 0
  for _, m in ipairs(redis.call('SMEMBERS', index)) do
    local session, ch = string.match(m, '^(%d+) (.+)$')
    if session then
      local base = prefix .. 'ch:' .. ch
      local field = node .. '/' .. session
      local entry = redis.call('HGET', base .. ':presence', field)
      if entry then
        redis.call('HDEL', base .. ':presence', field)
        redis.call('PUBLISH', base .. ':pub', '\147\002' .. entry .. cmsgpack.pack(node))
        removed = removed + 1
      end
    end
  end
  redis.call('DEL', index)
  redis.call('SREM', prefix .. 'nodes', node)
  return removed
end
if ARGV[2] ~= '' then return clear(ARGV[2]) end
local removed = 0
for _, node in ipairs(redis.call('SMEMBERS', prefix .. 'nodes')) do
  if redis.call('EXISTS', prefix .. 'node:' .. node .. ':lease') == 0 then
    removed = removed + clear(node)
  end
end
return removed
"#;

/// Renews this node's lease. KEYS: lease. ARGV: this process's token, lease ms, take
/// ('1': take it whoever holds it). Returns 1 if the lease had lapsed (or was never taken),
/// 0 if renewed, -1 if another process holds it.
const RENEW: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] and ARGV[3] ~= '1' then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if v then return 0 end
return 1
"#;

/// The scripts, loaded once per broker (`EVALSHA`, falling back to `EVAL` after a Redis
/// restart flushed the script cache).
pub(crate) struct Scripts {
    pub publish: Script,
    pub history: Script,
    pub presence_add: Script,
    pub presence_remove: Script,
    pub sweep: Script,
    pub renew: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            publish: Script::new(PUBLISH),
            history: Script::new(HISTORY),
            presence_add: Script::new(PRESENCE_ADD),
            presence_remove: Script::new(PRESENCE_REMOVE),
            sweep: Script::new(SWEEP),
            renew: Script::new(RENEW),
        }
    }
}
