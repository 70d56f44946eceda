-- wait_end.lua: a waiting TryLock looks at its entry after a wake-up, a fallback
-- timeout or its deadline, and confirms its grant when it has one.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-5] common (see prelude)
-- ARGV[6]   storage key
-- ARGV[7]   entry id
-- ARGV[8]   owner string
-- ARGV[9]   request id or ''
-- ARGV[10]  the entry's deadline µs
-- ARGV[11]  'poll' (keep waiting unless granted or past the deadline) or 'end'
--           (the call gives up: its deadline came)
-- ARGV[12]  what the wake-up said: 'g', 'c', 't' or ''
-- ARGV[13]  request_id_retention µs
--
-- Reply (JSON): r = 'queued' (keep waiting), or 'ans' with a = the answer and
-- fresh = true when this call confirmed a grant; plus ev/ho/now.

local sk, id, owner, rid = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local dl = tonumber(ARGV[10])
local mode, hint = ARGV[11], ARGV[12]
local retention = tonumber(ARGV[13])

-- Granted to this entry: confirm, the lease runs its full ttl from now. This does
-- not settle first, as the embedded store does not: a grant still recorded for the
-- entry is the entry's, even at the very end of its claim window.
local l = read_lock(sk)
if l and l.entry == id then
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

if redis.call('HEXISTS', k_entries(sk), id) == 1 then
  if mode == 'poll' and NOW < dl then return reply({ r = 'queued' }) end
  local e = remove_entry(sk, id)
  emit('queue.left', sk, e.owner, nil, id)
  redis.call('DEL', k_wake(id))
  local cur = settle(sk)
  gc(sk)
  local a = { acq = false, lock = cur and lock_view(sk, cur, false) or nil, reason = 'timeout' }
  remember(owner, rid, retention, a)
  return reply({ r = 'ans', a = a, fresh = false })
end

-- The entry is gone: cancelled (CancelQueueEntry, UnlockByPull) or dropped at its
-- deadline. A cancelled call's answer is not kept for retries.
redis.call('DEL', k_wake(id))
local cur = settle(sk)
local public = cur and lock_view(sk, cur, false) or nil
if hint == 'c' or (hint == '' and NOW < dl) then
  return reply({ r = 'ans', a = { acq = false, lock = public, reason = 'cancelled' }, fresh = false })
end
local a = { acq = false, lock = public, reason = 'timeout' }
remember(owner, rid, retention, a)
return reply({ r = 'ans', a = a, fresh = false })
