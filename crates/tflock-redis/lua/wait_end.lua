-- wait_end.lua: a waiting TryLock looks at its entry after a wake-up, a fallback
-- timeout or its deadline, and confirms its grant when it has one.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   resource key
-- ARGV[8]   entry id
-- ARGV[9]   owner string
-- ARGV[10]   request id or ''
-- ARGV[11]  the entry's deadline µs
-- ARGV[12]  'poll' (keep waiting unless granted or past the deadline) or 'end'
--           (the call gives up: its deadline came)
-- ARGV[13]  what the wake-up said: 'g', 'c', 't' or ''
-- ARGV[14]  request_id_retention µs
--
-- Reply (JSON): r = 'queued' (keep waiting), or 'ans' with a = the answer and
-- fresh = true when this call confirmed a grant; plus ev/ho/now.

local sk, id, owner, rid = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local dl = tonumber(ARGV[11])
local mode, hint = ARGV[12], ARGV[13]
local retention = tonumber(ARGV[14])

-- Confirms the grant `l` made to this entry: the lease runs its full ttl from now.
local function confirm(l)
  redis.call('HSET', k_lock(sk), 'cent', id, 'cexp', l.expires)
  if l.claim == '1' then
    l.claim = '0'
    l.expires = fmt(NOW + tonumber(l.ttl))
  end
  l.entry = ''
  redis.call('HSET', k_lock(sk), 'claim', '0', 'expires', l.expires, 'entry', '')
  redis.call('ZADD', K_DUE, l.expires, sk)
  redis.call('DEL', k_wake(id))
  local a = { acq = true, lock = lock_view(sk, l, true) }
  remember(owner, rid, retention, a)
  return reply({ r = 'ans', a = a, fresh = true })
end

-- Granted to this entry: confirm. This does not settle first, as the embedded store
-- does not: a grant still recorded for the entry is the entry's, even at the very end
-- of its claim window.
local l = read_lock(sk)
if l and l.entry == id then return confirm(l) end

if mode == 'poll' and NOW < dl and redis.call('HEXISTS', k_entries(sk), id) == 1 then
  -- Still waiting. The slow fallback also ends an expired lease and hands it on (to
  -- this entry or a better one), so waiters are served even while no sweeper runs
  -- (say, before a cluster has elected its next leader).
  local cur = settle(sk)
  if cur and cur.entry == id then return confirm(cur) end
  if redis.call('HEXISTS', k_entries(sk), id) == 1 then return reply({ r = 'queued' }) end
end

if redis.call('HEXISTS', k_entries(sk), id) == 1 then
  local e = remove_entry(sk, id)
  emit('queue.left', sk, e.owner, nil, id)
  redis.call('DEL', k_wake(id))
  local cur = settle(sk)
  gc(sk)
  local a = { acq = false, lock = cur and lock_view(sk, cur, false) or nil, reason = 'timeout' }
  remember(owner, rid, retention, a)
  return reply({ r = 'ans', a = a, fresh = false })
end

-- The entry is gone: granted to another call with the same request id (a retry
-- that waits on the same entry, or took the claim over), cancelled
-- (CancelQueueEntry, UnlockByPull) or dropped at its deadline. The outcome is kept
-- for retries (contract rule 8).
redis.call('DEL', k_wake(id))
local cur = settle(sk)
if rid ~= '' and cur and cur.rid == rid and cur.owner == owner and cur.entry == '' then
  delivered(sk)
  return reply({ r = 'ans', a = { acq = true, lock = lock_view(sk, cur, true) }, fresh = false })
end
local public = cur and lock_view(sk, cur, false) or nil
if hint == 'c' or (hint == '' and NOW < dl) then
  local a = { acq = false, lock = public, reason = 'cancelled' }
  remember(owner, rid, retention, a)
  return reply({ r = 'ans', a = a, fresh = false })
end
local a = { acq = false, lock = public, reason = 'timeout' }
remember(owner, rid, retention, a)
return reply({ r = 'ans', a = a, fresh = false })
