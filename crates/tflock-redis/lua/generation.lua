-- generation.lua: the bucket's generation marker, checked and kept (docs/redis-design.md,
-- "Data loss"). The marker `P{b:NN}:gen` is a hash: `id`, random, written once per
-- generation of the bucket's data; `lost` and `hold`, µs, set when a loss of this
-- generation was found (the loss's instant and the end of its lock_delay, during
-- which try_lock grants nothing); and one `seen:<server>` field per server: its
-- check count and the instant it wrote it. A marker that is gone or has another id
-- than the one a server saw means the bucket's data went (restart without
-- persistence, FLUSHDB/FLUSHALL); a server's own `seen` field older than the one it
-- wrote means older data came back (an old backup, a replica that lagged promoted).
-- `layout` is the key layout of the bucket's data (upgrade.lua; tflock-redis keys.rs
-- LAYOUT).
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   the marker id this server saw last on this bucket, or '' (none yet)
-- ARGV[8]   a fresh random id: the new generation's, if one starts now
-- ARGV[9]   lock_delay µs
-- ARGV[10]  this server's instance id
-- ARGV[11]  the `seen` value this server wrote last here, or '' (not known)
-- ARGV[12]  this server's check count
--
-- Reply (JSON): id (the marker's), seen (what this call wrote), lost ('' or what was
-- found: 'missing', 'changed', 'rolled_back'), lost_at and hold ('0' for none), plus
-- ev/ho/now (see prelude's reply()).

local known, fresh, delay = ARGV[7], ARGV[8], tonumber(ARGV[9])
local me, expect, count = ARGV[10], ARGV[11], ARGV[12]

local cur = redis.call('HGET', K_GEN, 'id')
local lost = ''
if not cur then
  -- A bucket without a marker is new or lost its data: nothing of an older layout
  -- is left in it (connect upgrades a bucket before its first check).
  redis.call('HSET', K_GEN, 'id', fresh, 'layout', LAYOUT)
  fence_layout1(true)
  cur = fresh
  if known ~= '' then lost = 'missing' end
elseif known ~= '' and cur ~= known then
  lost = 'changed'
elseif known ~= '' and expect ~= '' and redis.call('HGET', K_GEN, 'seen:' .. me) ~= expect then
  -- Older data came back with the same id: start a new generation, so that every
  -- other server finds the marker changed even if its own `seen` survived.
  lost = 'rolled_back'
  -- The data that came back keeps its layout: an older one is upgraded by the
  -- next TryLock that finds it (try_lock.lua's 'layout').
  local layout = redis.call('HGET', K_GEN, 'layout')
  redis.call('DEL', K_GEN)
  redis.call('HSET', K_GEN, 'id', fresh)
  if layout then redis.call('HSET', K_GEN, 'layout', layout) end
  cur = fresh
end
-- The first server to find a generation's loss starts the delay; the others report
-- the same loss and keep its delay (no server extends it).
if lost ~= '' and not redis.call('HGET', K_GEN, 'lost') then
  redis.call('HSET', K_GEN, 'lost', fmt(NOW), 'hold', fmt(NOW + delay))
end
local seen = count .. ':' .. fmt(NOW)
redis.call('HSET', K_GEN, 'seen:' .. me, seen)

-- Servers come and go (each start has a new id): forget the fields of those that
-- have not checked for a day, a few at a time.
if redis.call('HLEN', K_GEN) > 64 then
  local all = redis.call('HGETALL', K_GEN)
  local dropped = 0
  for i = 1, #all, 2 do
    local f, v = all[i], all[i + 1]
    if dropped < 100 and string.sub(f, 1, 5) == 'seen:' then
      local at = tonumber(string.match(v, ':(%d+)$') or '0')
      if at < NOW - 86400000000 then
        redis.call('HDEL', K_GEN, f)
        dropped = dropped + 1
      end
    end
  end
end

local g = redis.call('HMGET', K_GEN, 'lost', 'hold')
return reply({ id = cur, seen = seen, lost = lost, lost_at = g[1] or '0', hold = g[2] or '0' })
