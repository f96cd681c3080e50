//! The Lua scripts the Redis store runs: deckhand's housekeeping call, and
//! Deckard's own add, pull and ack/nack (for `deckhand load` and the tests).
//! Each runs atomically on the server, so every move of an element between
//! Deckard's sets happens whole or not at all.

/// KEYS: active, processing, lock_ack, lock_ack:score, lock_nack, lock_nack:score, fence.
/// ARGV: epoch (fencing token), now_ms (capped at Redis's `TIME`), batch,
/// unlock (0/1), timeout (0/1), fence retention ms.
/// Returns {0, fence} when fenced, {2} when the queue is gone (its four sets
/// empty: the fence is kept, raised if need be, only for the retention),
/// else {1, unlocked_ack, unlocked_nack, timed_out, next_due or -1, active,
/// processing, locked_ack, locked_nack, oldest_overdue_ms, now used,
/// lateness...}. "Now used" is the caller's now capped at Redis's clock:
/// `next_due` is on that clock, and the caller shifts it onto its own.
/// An idle queue (nothing in processing or locked) costs six calls inside
/// the script: the fence, its PERSIST and four ZCARDs.
pub(super) const HOUSEKEEP: &str = r#"
local fence = tonumber(redis.call('GET', KEYS[7]) or '0')
local epoch = tonumber(ARGV[1])
if epoch < fence then
  return {0, fence}
end
local n_tmp = redis.call('ZCARD', KEYS[2])
local n_ack = redis.call('ZCARD', KEYS[3])
local n_nack = redis.call('ZCARD', KEYS[5])
if n_tmp + n_ack + n_nack == 0 then
  local n_active = redis.call('ZCARD', KEYS[1])
  if n_active == 0 then
    -- Gone: Deckard emptied the queue. Keep the fence only for the retention.
    if epoch > fence then
      redis.call('SET', KEYS[7], ARGV[1], 'PX', ARGV[6])
    elseif fence > 0 then
      redis.call('PEXPIRE', KEYS[7], ARGV[6])
    end
    return {2}
  end
  if epoch > fence then
    redis.call('SET', KEYS[7], ARGV[1])
  else
    redis.call('PERSIST', KEYS[7])
  end
  -- Nothing in processing or locked (an idle queue): nothing to move.
  return {1, 0, 0, 0, -1, n_active, 0, 0, 0, 0, tonumber(ARGV[2])}
end
if epoch > fence then
  redis.call('SET', KEYS[7], ARGV[1])
else
  -- A fence left to expire while the queue was gone is permanent again.
  redis.call('PERSIST', KEYS[7])
end
-- "Now" is the caller's clock, but never later than Redis's own: a node
-- whose clock stepped ahead must not unlock or time out early. (A clock
-- behind only makes moves late.) Effects replication, the default since
-- Redis 5, lets a script read TIME and then write.
if redis.replicate_commands then redis.replicate_commands() end
local now = tonumber(ARGV[2])
local t = redis.call('TIME')
local redis_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis_now < now then now = redis_now end
local now_arg = string.format('%.0f', now)
local budget = tonumber(ARGV[3])
local late = {}
-- Lua's C stack holds about 8,000 values: a call's arguments go in chunks
-- (a batch of 4,000 locks is 8,000 ZADD arguments).
local CHUNK = 1000
local function chunked(cmd, key, list)
  for i = 1, #list, CHUNK do
    redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
end
local function unlock(lock, restore, default, count)
  if budget <= 0 or count == 0 then return 0 end
  local due = redis.call('ZRANGE', lock, '-inf', now_arg, 'BYSCORE', 'LIMIT', 0, budget, 'WITHSCORES')
  if #due == 0 then return 0 end
  local ids = {}
  for i = 1, #due, 2 do
    ids[#ids + 1] = due[i]
    late[#late + 1] = now - tonumber(due[i + 1])
  end
  local scores = {}
  for i = 1, #ids, CHUNK do
    local part = redis.call('ZMSCORE', restore, unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
    for j = 1, #part do scores[#scores + 1] = part[j] end
  end
  local args = {}
  for i, id in ipairs(ids) do
    local s = scores[i]
    if not s then s = default end
    args[#args + 1] = s
    args[#args + 1] = id
  end
  chunked('ZADD', KEYS[1], args)
  chunked('ZREM', lock, ids)
  chunked('ZREM', restore, ids)
  budget = budget - #ids
  return #ids
end
local acks, nacks, timeouts = 0, 0, 0
if ARGV[4] == '1' then
  acks = unlock(KEYS[3], KEYS[4], now_arg, n_ack)
  nacks = unlock(KEYS[5], KEYS[6], '0', n_nack)
end
if ARGV[5] == '1' and budget > 0 and n_tmp > 0 then
  local due = redis.call('ZRANGE', KEYS[2], '-inf', now_arg, 'BYSCORE', 'LIMIT', 0, budget)
  if #due > 0 then
    local args = {}
    for _, id in ipairs(due) do
      args[#args + 1] = '0'
      args[#args + 1] = id
    end
    chunked('ZADD', KEYS[1], args)
    chunked('ZREM', KEYS[2], due)
    timeouts = #due
  end
end
-- The lowest score left in a set (-1: empty), without a call for an empty set.
local function first(key, count)
  if count <= 0 then return -1 end
  local f = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #f == 0 then return -1 end
  return tonumber(f[2])
end
local function lower(a, b)
  if a == -1 then return b end
  if b == -1 then return a end
  if a < b then return a end
  return b
end
local f_ack = first(KEYS[3], n_ack - acks)
local f_nack = first(KEYS[5], n_nack - nacks)
local next_due = -1
if ARGV[4] == '1' then next_due = lower(f_ack, f_nack) end
if ARGV[5] == '1' then next_due = lower(next_due, first(KEYS[2], n_tmp - timeouts)) end
local oldest = lower(f_ack, f_nack)
local overdue = 0
if oldest ~= -1 and oldest < now then overdue = now - oldest end
local result = {1, acks, nacks, timeouts, next_due,
  redis.call('ZCARD', KEYS[1]), n_tmp - timeouts, n_ack - acks, n_nack - nacks, overdue, now}
for _, l in ipairs(late) do result[#result + 1] = l end
return result
"#;

/// Deckard's add: KEYS active, processing, lock_ack, lock_nack; ARGV score, id, ...
pub(super) const ADD: &str = r#"
local inserted = 0
for i = 1, #ARGV, 2 do
  local id = ARGV[i + 1]
  local present = false
  for _, key in ipairs(KEYS) do
    if redis.call('ZSCORE', key, id) then present = true break end
  end
  if not present then
    redis.call('ZADD', KEYS[1], ARGV[i], id)
    inserted = inserted + 1
  end
end
return inserted
"#;

/// Deckard's pull: KEYS active, processing; ARGV n, deadline score.
pub(super) const PULL: &str = r#"
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #ids == 0 then return {} end
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[2], ARGV[2], id)
end
redis.call('ZREM', KEYS[1], unpack(ids))
return ids
"#;

/// Deckard's ack/nack: KEYS processing, lock, lock:score, active;
/// ARGV id, lock_ms, unlock time, restore score or '', default score.
pub(super) const RELEASE: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  if ARGV[4] ~= '' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
else
  local s = ARGV[4]
  if s == '' then s = ARGV[5] end
  redis.call('ZADD', KEYS[4], s, ARGV[1])
end
return 1
"#;

/// The next cluster generation: one above the counter and above the
/// highest generation found in a fence, in one step so two leaders that
/// create clusters at once never share one.
/// KEYS: the `deckhand_generation` counter. ARGV: the generation to exceed.
pub(super) const RAISE_GENERATION: &str = r#"
local current = redis.call('GET', KEYS[1])
if current and not tonumber(current) then
  return redis.error_reply(KEYS[1] .. ' holds ' .. current .. ', not a number: delete it (generations are chosen above every fence anyway)')
end
local g = redis.call('INCR', KEYS[1])
local above = tonumber(ARGV[1])
if g <= above then
  g = above + 1
  redis.call('SET', KEYS[1], g)
end
return g
"#;
