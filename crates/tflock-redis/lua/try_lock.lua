-- try_lock.lua: TryLock's decision, atomically (contract TryLock rules 1 to 7).
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   resource key
-- ARGV[8]   owner string
-- ARGV[9]   username or ''
-- ARGV[10]   pull number or ''
-- ARGV[11]  owner metadata JSON (tflock_core::Owner)
-- ARGV[12]  priority rank 0..3
-- ARGV[13]  lease ttl µs
-- ARGV[14]  mode: 'n' no wait, 'w' wait, 'r' reserve
-- ARGV[15]  µs: the wait ('w') or the reservation's lifetime ('r')
-- ARGV[16]  request id or ''
-- ARGV[17]  max_queue_size
-- ARGV[18]  request_id_retention µs
-- ARGV[19]  '1' when the priority queue is enabled
-- ARGV[20]  '1' when retries are enabled
-- ARGV[21]  µs after a waiter's deadline at which the sweeper drops its entry
-- ARGV[22]  'a' remember every answer, 'g' only grants (retry-loop attempts)
-- ARGV[23]  the entry id to use if the request is queued: the bucket's two hex
--           digits and 30 random ones, chosen by the client so that its waiter's
--           drop guard knows the id even before this reply arrives
-- ARGV[24]  id of the node (server) serving a waiter, or '' without a cluster
--           manager: a waiter's entry is recorded under it in `enode`, so the
--           cluster's leader can remove the entries of a server that died
-- ARGV[25]  the caller's lease id (re-lock proof, contract rule 2) or ''
-- ARGV[26]  lock_delay µs
-- ARGV[27]  '1' when this server has seen the bucket's generation marker (so a
--           missing one means the bucket lost its data, see generation.lua)
--
-- Reply (JSON): r = 'ans' (a = the answer; fresh = true for a grant to this call,
-- which min_replicas_ack rolls back when unconfirmed; chg = true for a re-lock,
-- which changed the live lease, or for a reservation's retry that renewed its
-- deadline), 'wait' (id, dl), 'full', 'retry', 'refused' or
-- 'delay' (hold: the lock_delay after a data loss runs until then; nothing was
-- changed), 'layout' (the bucket's marker names another key layout: nothing was
-- changed); lost = 'missing' when this call found the generation marker gone; plus
-- ev/ho/now (see prelude's reply()).

local sk = ARGV[7]
local who = { owner = ARGV[8], user = ARGV[9], pull = ARGV[10], meta = ARGV[11], prio = ARGV[12] }
local ttl = tonumber(ARGV[13])
local mode = ARGV[14]
local span = tonumber(ARGV[15])
local rid = ARGV[16]
local max_queue = tonumber(ARGV[17])
local retention = tonumber(ARGV[18])
local queue_enabled = ARGV[19] == '1'
local retries_enabled = ARGV[20] == '1'
local grace = tonumber(ARGV[21])
local remember_all = ARGV[22] == 'a'
local proof = ARGV[25] or ''

-- 'missing' when this call found the bucket's generation marker gone (see below).
local found = nil

local function answer(a, fresh, chg)
  if remember_all or a.acq then remember(who.owner, rid, retention, a) end
  return reply({ r = 'ans', a = a, fresh = fresh, chg = chg, lost = found })
end

local cur = settle(sk)

-- An answer from the present, not stored: a replay changes nothing but a
-- reservation's deadline (chg, see renew()).
local function now_answer(a, chg) return reply({ r = 'ans', a = a, fresh = false, chg = chg }) end
local function public_now() return cur and lock_view(sk, cur, false) or nil end
local function lost() return now_answer({ acq = false, lock = public_now(), reason = 'lease_lost' }) end
-- A reservation's retry by its owner (mode 'r', same request id) while it still
-- waits renews it (contract rules 5 and 8): its deadline, and the sweeper's K_EDL
-- score with it, become max(dl, NOW + span), so a polling client keeps its place
-- only while it polls. Id, place, enq and priority stay; a waiter's entry is never
-- touched, and one past its deadline (not swept yet) is not brought back. Returns
-- true when the deadline moved: a change, which min_replicas_ack confirms with WAIT
-- like a re-lock.
local function renew(id)
  if mode ~= 'r' then return false end
  local raw = redis.call('HGET', k_entries(sk), id)
  if not raw then return false end
  local e = cjson.decode(raw)
  local dl = tonumber(e.dl)
  if e.kind ~= 'r' or dl <= NOW then return false end
  -- The renewal also raises the TTL the grant will get (a place first taken for a
  -- short while is granted only for that while unless its owner came back for it).
  local longer = NOW + span > dl
  local more_ttl = ttl > tonumber(e.ttl)
  if not longer and not more_ttl then return false end
  if longer then e.dl = fmt(NOW + span) end
  if more_ttl then e.ttl = fmt(ttl) end
  redis.call('HSET', k_entries(sk), id, cjson.encode(e))
  redis.call('ZADD', K_EDL, e.dl, id)
  return true
end

-- Whether the live lease is the one granted to this request id.
local function live_grant() return cur and cur.rid == rid and cur.owner == who.owner and cur.entry == '' end

-- A retry of an answered request is answered from the present (contract rule 8):
-- its grant if that lease is still the live one, its entry if that still waits, else
-- lease_lost (or the outcome it had: a timeout). A call answered 'held' without a
-- queue entry is simply evaluated again. A retry whose grant is still in its claim
-- window takes the grant over.
if rid ~= '' then
  -- A grant still in its claim window (or given back to it by abandon.lua) is
  -- this request's: a retry takes it over.
  if cur and cur.rid == rid and cur.owner == who.owner and cur.entry ~= '' then
    if cur.claim == '1' then
      cur.claim = '0'
      cur.expires = fmt(NOW + tonumber(cur.ttl))
    end
    redis.call('HSET', k_lock(sk), 'claim', '0', 'expires', cur.expires, 'entry', '')
    delivered(sk)
    redis.call('ZADD', K_DUE, cur.expires, sk)
    redis.call('DEL', k_wake(cur.entry))
    cur.entry = ''
    return answer({ acq = true, lock = lock_view(sk, cur, true) }, true)
  end
  local akey = who.owner .. SEP .. rid
  local stored = redis.call('HGET', K_ANS, akey)
  -- An answer past request_id_retention is forgotten even before the sweeper
  -- removes it: the request id is then the proof of a re-lock (rule 2).
  if stored and tonumber(redis.call('ZSCORE', K_ANSDUE, akey) or '0') <= NOW then
    redis.call('HDEL', K_ANS, akey)
    redis.call('ZREM', K_ANSDUE, akey)
    stored = nil
  end
  if stored then
    local a = cjson.decode(stored)
    if a.acq then
      local lease = a.lock and a.lock.lease or ''
      if cur and lease ~= '' and cur.lease == lease then
        delivered(sk)
        return now_answer({ acq = true, lock = lock_view(sk, cur, true) })
      end
      return lost()
    elseif a.q then
      if redis.call('HEXISTS', k_entries(sk), a.q.id) == 1 then
        local renewed = renew(a.q.id)
        return now_answer({
          acq = false, lock = public_now(), reason = 'held',
          q = { id = a.q.id, pos = position(sk, a.q.id) },
        }, renewed)
      end
      if live_grant() then
        delivered(sk)
        return now_answer({ acq = true, lock = lock_view(sk, cur, true) })
      end
      return lost()
    elseif a.reason == 'timeout' or a.reason == 'cancelled' then
      return now_answer({ acq = false, lock = public_now(), reason = a.reason })
    end
  end
  -- The first call is still queued (its answer is not kept yet): the same entry,
  -- never a second one. A waiting retry waits on that entry. Found by the owner
  -- index (prelude ix_entry), not by reading the queue.
  local e = ix_entry(sk, 'r:' .. who.owner .. SEP .. rid)
  if e and e.rid == rid and e.owner == who.owner then
    if e.kind == 'w' and mode == 'w' then return reply({ r = 'wait', id = e.id, dl = e.dl }) end
    local renewed = renew(e.id)
    return now_answer({
      acq = false, lock = public_now(), reason = 'held', q = { id = e.id, pos = position(sk, e.id) },
    }, renewed)
  end
end

if not cur then
  -- After a data loss nothing is granted until its lock_delay ends (holders whose
  -- record was lost may still be working). A marker gone since this server saw it is
  -- a loss found here, before any health check: it starts the delay itself.
  local gen = redis.call('HMGET', K_GEN, 'id', 'hold', 'layout')
  -- A marker of another key layout: this bucket's data is where these scripts do
  -- not look (a store written by an older build, or such a backup restored). Nothing
  -- is granted before the client upgrades the bucket (upgrade.lua) and asks again.
  if gen[1] and gen[3] ~= LAYOUT then return reply({ r = 'layout' }) end
  local hold = tonumber(gen[2] or '0')
  if not gen[1] and ARGV[27] == '1' then
    found = 'missing'
    hold = NOW + tonumber(ARGV[26])
    redis.call('HSET', K_GEN, 'id', new_id(32), 'lost', fmt(NOW), 'hold', fmt(hold), 'layout', LAYOUT)
  end
  if hold > NOW then return reply({ r = 'delay', hold = fmt(hold), lost = found }) end
  local l = grant(sk, who, ttl, ttl, nil, rid ~= '' and rid or nil)
  return answer({ acq = true, lock = lock_view(sk, l, true) }, true)
end

if cur.owner == who.owner then
  -- The owner string is public: a re-lock needs the live lease id or the request id
  -- the grant was made with (contract rule 2). Without, the public view only, and no
  -- queue entry behind itself.
  local proved = (proof ~= '' and cur.lease == proof) or (rid ~= '' and cur.rid == rid)
  if not proved then
    return answer({ acq = false, lock = lock_view(sk, cur, false), reason = 'held_by_owner' }, false)
  end
  -- Re-lock by the holder (Atlantis re-plans): same lease and token, expiry pushed
  -- out to max(current, now + ttl), an unconfirmed claim confirmed.
  local expires = math.max(tonumber(cur.expires), NOW + ttl)
  if cur.claim == '1' then
    expires = math.max(expires, NOW + tonumber(cur.ttl))
  end
  cur.expires = fmt(expires)
  cur.claim = '0'
  cur.ttl = fmt(math.max(tonumber(cur.ttl), ttl))
  if cur.entry ~= '' then redis.call('DEL', k_wake(cur.entry)) end
  cur.entry = ''
  redis.call('HSET', k_lock(sk), 'expires', cur.expires, 'claim', '0', 'ttl', cur.ttl, 'entry', '')
  delivered(sk)
  redis.call('ZADD', K_DUE, cur.expires, sk)
  return answer({ acq = true, lock = lock_view(sk, cur, true) }, false, true)
end

local public = lock_view(sk, cur, false)
if mode == 'n' then
  return answer({ acq = false, lock = public, reason = 'held' }, false)
end
if not queue_enabled then
  if mode == 'w' and retries_enabled then return reply({ r = 'retry' }) end
  return reply({ r = 'refused' })
end

if mode == 'r' then
  -- One reservation per owner and resource: reserving again answers with the place
  -- already held. With a request id (another one of the same owner, e.g. an older
  -- one of the Terraform backend's chain whose answer was forgotten) that answer
  -- renews the reservation like its own retry does (chg) and is remembered, so that
  -- this request id's retries are answered from the present (rules 5 and 8): renewed
  -- while it waits, lease_lost once it is granted under another request id.
  local e = ix_entry(sk, 'o:' .. who.owner)
  if e and e.kind == 'r' and e.owner == who.owner then
    local a = {
      acq = false, lock = public, reason = 'held', q = { id = e.id, pos = position(sk, e.id) },
    }
    if rid == '' then return reply({ r = 'ans', fresh = false, a = a }) end
    local renewed = renew(e.id)
    return answer(a, false, renewed)
  end
end

if redis.call('HLEN', k_entries(sk)) >= max_queue then
  return reply({ r = 'full' })
end

local id = ARGV[23]
local kind = mode == 'r' and 'r' or 'w'
local dl = NOW + span
local e = {
  id = id, kind = kind, prio = who.prio, enq = fmt(NOW), dl = fmt(dl), ttl = fmt(ttl),
  rid = rid, owner = who.owner, user = who.user, pull = who.pull, meta = who.meta,
}
add_entry(sk, e)
-- The sweeper drops a reservation at its deadline; a waiter's own call handles its
-- deadline, so the sweeper only drops the entry of a waiter whose server died.
redis.call('ZADD', K_EDL, kind == 'r' and e.dl or fmt(dl + grace), id)
redis.call('ZADD', K_IDX, 0, sk)
if kind == 'w' and ARGV[24] ~= '' then redis.call('HSET', K_ENODE, id, ARGV[24]) end
emit('queue.entered', sk, who.owner, nil, id)

if kind == 'r' then
  return answer({
    acq = false, lock = public, reason = 'held', q = { id = id, pos = position(sk, id) },
  }, false)
end
return reply({ r = 'wait', id = id, dl = e.dl })
