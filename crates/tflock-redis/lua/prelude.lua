-- prelude.lua: shared by every script (prepended at build time, so each script is
-- still one EVALSHA). Owns the key layout, the clock, the grant order, settle,
-- hand-off, grant and the event list. See docs/redis-design.md.
--
-- KEYS[1]  the bucket's key prefix `P{b:NN}:`; every key a script touches is that
--          prefix plus a suffix, so all of them hash to the bucket's slot.
-- ARGV[1]  now override in µs since the epoch, or '' to use Redis's TIME
-- ARGV[2]  claim_timeout in µs
-- ARGV[3]  starvation_threshold in µs
-- ARGV[4]  max_priority_boost (0..3)
-- ARGV[5]  seed: 32 random hex digits; lease and entry ids are derived from it
-- ARGV[6]  events: '' (not published), else 'c' or 's' and the origin (the calling
--          backend's instance id): this call's events are published, tagged with the
--          origin, on the classic channel `<key_prefix>events` ('c') or on the
--          bucket's sharded channel `P{b:NN}:events` ('s', Redis 7 SPUBLISH)
-- ARGV[7..] the script's own arguments (see its header)
--
-- Numbers: Lua numbers are doubles. µs timestamps (~1.8e15) and tokens are exact
-- below 2^53, but tostring() prints 14 digits, so every number that leaves a script
-- goes through fmt() as a string.

local P = KEYS[1]
local SEP = '\31'

local NOW
if ARGV[1] ~= '' then
  NOW = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local CLAIM = tonumber(ARGV[2])
local STARVE = tonumber(ARGV[3])
if STARVE < 1 then STARVE = 1 end
local MAXBOOST = tonumber(ARGV[4])
local SEED = ARGV[5]
local PUB = string.sub(ARGV[6], 1, 1)
local ORIGIN = string.sub(ARGV[6], 2)
-- The key prefix without the bucket's tag `{b:NN}:` (7 bytes).
local ROOT = string.sub(P, 1, #P - 7)

-- What this call did, returned to the client: events to publish, hand-off count.
local EV = {}
local HANDOFFS = 0
local IDS = 0
-- Set by a duty a leader runs under its epoch (fenced): published with its events.
local EPOCH = nil
local PUBS = 0
local PUBERR = nil

local function fmt(n) return string.format('%.0f', n) end

local K_DUE = P .. 'due'            -- zset: storage key -> lease expiry
local K_EDL = P .. 'edl'            -- zset: entry id -> when the sweeper drops it
local K_IDX = P .. 'idx'            -- zset (score 0): storage keys with a lock or a queue
local K_TIDX = P .. 'tidx'          -- zset (score 0): storage keys with a token counter
local K_EIDX = P .. 'eidx'          -- hash: entry id -> storage key
local K_ANS = P .. 'answers'        -- hash: owner SEP request_id -> answer JSON
local K_ANSDUE = P .. 'answers_due' -- zset: answer key -> when it is forgotten
local K_ENODE = P .. 'enode'        -- hash: waiter entry id -> id of the node serving it
local K_FENCE = P .. 'fence'        -- string: highest leader epoch that acted on the bucket
local K_GEN = P .. 'gen'            -- hash: the bucket's generation marker (generation.lua)

local function k_lock(sk) return P .. 'lock:' .. sk end
local function k_token(sk) return P .. 'token:' .. sk end
local function k_lane(p, sk) return P .. 'q' .. p .. ':' .. sk end
local function k_entries(sk) return P .. 'entries:' .. sk end
local function k_wake(id) return P .. 'wake:' .. id end

-- A waiter's confirmation records the entry (`cent`) and the claim's expiry (`cexp`)
-- in the lock, until the lease reaches someone else's hands (a refresh, re-lock,
-- transfer or replay by the lease or request id): if the waiter's caller went away
-- before it got the answer, abandon.lua undoes the confirmation.
local function delivered(sk) redis.call('HDEL', k_lock(sk), 'cent', 'cexp') end

-- A fresh id: hex of sha1(seed, counter). The seed is 128 random bits from the
-- client, so ids are as unguessable as the seed; one seed serves every id one call
-- makes (a sweep may hand off many locks).
local function new_id(n)
  IDS = IDS + 1
  return string.sub(redis.sha1hex(SEED .. ':' .. IDS), 1, n)
end

local function emit(kind, sk, owner, token, entry)
  EV[#EV + 1] = { k = kind, sk = sk, o = owner, t = token, e = entry, at = fmt(NOW) }
end

-- The contract's anti-starvation rule, as tflock_core::queue::StarvationPolicy.
local function effective(prio, enq)
  local waited = NOW - enq
  if waited < 0 then waited = 0 end
  local steps = math.floor(waited / STARVE)
  if steps > MAXBOOST then steps = MAXBOOST end
  local e = prio + steps
  if e > 3 then e = 3 end
  return e
end

-- Grant order (tflock_core::queue::grant_cmp): true when a goes before b.
-- a and b are { id, prio, enq }.
local function before(a, b)
  local ea, eb = effective(a.prio, a.enq), effective(b.prio, b.enq)
  if ea ~= eb then return ea > eb end
  if a.enq ~= b.enq then return a.enq < b.enq end
  -- Ids are equal-length lower-case hex, which every collation orders as bytes.
  return a.id < b.id
end

-- The lock hash as a table, or nil.
local function read_lock(sk)
  local raw = redis.call('HGETALL', k_lock(sk))
  if #raw == 0 then return nil end
  local l = {}
  for i = 1, #raw, 2 do l[raw[i]] = raw[i + 1] end
  return l
end

-- The lock as the client decodes it; with_lease = false is the public view.
local function lock_view(sk, l, with_lease)
  local v = {
    sk = sk, owner = l.owner, meta = l.meta, prio = l.prio, token = l.token,
    acquired = l.acquired, expires = l.expires, ttl = l.ttl, claim = l.claim,
  }
  if with_lease then v.lease = l.lease end
  return v
end

local function entry_view(sk, e, pos)
  local enq = tonumber(e.enq)
  local w = NOW - enq
  if w < 0 then w = 0 end
  return {
    sk = sk, e = e, eff = effective(tonumber(e.prio), enq), pos = pos, waited = fmt(w),
  }
end

-- Every entry of a resource, decoded, in no particular order.
local function all_entries(sk)
  local raw = redis.call('HGETALL', k_entries(sk))
  local out = {}
  for i = 2, #raw, 2 do out[#out + 1] = cjson.decode(raw[i]) end
  return out
end

-- 1-based place of entry `id` in the grant order of its resource's queue.
local function position(sk, id)
  local all = all_entries(sk)
  local me
  for _, e in ipairs(all) do
    if e.id == id then me = { id = e.id, prio = tonumber(e.prio), enq = tonumber(e.enq) } end
  end
  if not me then return 0 end
  local pos = 1
  for _, e in ipairs(all) do
    if e.id ~= id and before({ id = e.id, prio = tonumber(e.prio), enq = tonumber(e.enq) }, me) then
      pos = pos + 1
    end
  end
  return pos
end

-- Drops a resource from the index once it has neither lock nor queue. Its token
-- key stays: tokens are never reused.
local function gc(sk)
  if redis.call('EXISTS', k_lock(sk)) == 0 and redis.call('EXISTS', k_entries(sk)) == 0 then
    redis.call('ZREM', K_IDX, sk)
  end
end

-- Removes an entry from every structure; returns the decoded entry or nil.
local function remove_entry(sk, id)
  local raw = redis.call('HGET', k_entries(sk), id)
  if not raw then return nil end
  local e = cjson.decode(raw)
  redis.call('HDEL', k_entries(sk), id)
  redis.call('ZREM', k_lane(e.prio, sk), id)
  redis.call('HDEL', K_EIDX, id)
  redis.call('HDEL', K_ENODE, id)
  redis.call('ZREM', K_EDL, id)
  return e
end

-- Tells a blocked waiter why it should look: 'g' granted, 'c' cancelled, 't' timed
-- out. The list expires by itself in case nobody ever reads it.
local function wake(id, why)
  local k = k_wake(id)
  redis.call('RPUSH', k, why)
  redis.call('PEXPIRE', k, fmt(math.floor(CLAIM / 1000) + 600000))
end

-- The resource's next fencing token (tflock_core FencingToken::next_after): one
-- more than the last, never below the clock in µs. The floor keeps tokens going up
-- when Redis lost the counter (restart without persistence, an old backup, a lagged
-- replica promoted): docs/contract.md, "Fencing token".
local function next_token(sk)
  local t = tonumber(redis.call('GET', k_token(sk)) or '0') + 1
  if NOW > t then t = NOW end
  redis.call('SET', k_token(sk), fmt(t))
  redis.call('ZADD', K_TIDX, 0, sk)
  return t
end

-- Makes `who` the holder with a new lease and token. `hold` µs is how long the lease
-- lasts now: the claim window for a waiter, else its ttl. Returns the lock table.
local function grant(sk, who, ttl, hold, entry, rid)
  local token = next_token(sk)
  local l = {
    owner = who.owner, user = who.user or '', pull = who.pull or '', meta = who.meta,
    prio = tostring(who.prio), lease = new_id(32), token = fmt(token),
    acquired = fmt(NOW), expires = fmt(NOW + hold), ttl = fmt(ttl),
    claim = entry and '1' or '0', entry = entry or '', rid = rid or '',
  }
  redis.call('HSET', k_lock(sk),
    'owner', l.owner, 'user', l.user, 'pull', l.pull, 'meta', l.meta, 'prio', l.prio,
    'lease', l.lease, 'token', l.token, 'acquired', l.acquired, 'expires', l.expires,
    'ttl', l.ttl, 'claim', l.claim, 'entry', l.entry, 'rid', l.rid)
  redis.call('ZADD', K_DUE, fmt(NOW + hold), sk)
  redis.call('ZADD', K_IDX, 0, sk)
  emit('lock.acquired', sk, l.owner, l.token, nil)
  return l
end

-- Grants a free lock to the best live queue entry. Entries past their deadline are
-- dropped on the way (their owners are told). Returns the granted entry's view.
local function handoff(sk)
  while true do
    local best
    for p = 0, 3 do
      local head = redis.call('ZRANGE', k_lane(p, sk), 0, 0, 'WITHSCORES')
      if head[1] then
        local c = { id = head[1], prio = p, enq = tonumber(head[2]) }
        if not best or before(c, best) then best = c end
      end
    end
    if not best then return nil end
    local e = remove_entry(sk, best.id)
    if not e then
      -- A lane member without its entry record: repair and look again.
      redis.call('ZREM', k_lane(best.prio, sk), best.id)
    elseif tonumber(e.dl) <= NOW then
      emit('queue.left', sk, e.owner, nil, e.id)
      if e.kind == 'w' then wake(e.id, 't') end
    else
      HANDOFFS = HANDOFFS + 1
      local view = entry_view(sk, e, 1)
      local who = { owner = e.owner, user = e.user, pull = e.pull, meta = e.meta, prio = e.prio }
      local ttl = tonumber(e.ttl)
      local rid = e.rid
      if rid == '' then rid = nil end
      if e.kind == 'w' then
        grant(sk, who, ttl, CLAIM, e.id, rid)
        wake(e.id, 'g')
      else
        local l = grant(sk, who, ttl, ttl, nil, rid)
        emit('queue.granted', sk, e.owner, l.token, e.id)
      end
      return view
    end
  end
end

-- Ends the current lease (event `kind`) and hands the lock on in the same step.
-- Returns the ended lock table and the view of the entry it went to.
local function release(sk, l, kind)
  redis.call('DEL', k_lock(sk))
  redis.call('ZREM', K_DUE, sk)
  emit(kind, sk, l.owner, l.token, nil)
  local to = handoff(sk)
  gc(sk)
  return to
end

-- Brings a resource up to date: an expired lease ends and its queue is handed on; a
-- free lock with a queue (only after a repair) is handed on. Returns the live lock.
local function settle(sk)
  local l = read_lock(sk)
  if l then
    if tonumber(l.expires) > NOW then return l end
    release(sk, l, 'lock.expired')
  elseif redis.call('EXISTS', k_entries(sk)) == 1 then
    handoff(sk)
  else
    return nil
  end
  return read_lock(sk)
end

-- Keeps the answer to a request with a request id for its retries.
local function remember(owner, rid, retention, answer)
  if rid == nil or rid == '' then return end
  local k = owner .. SEP .. rid
  redis.call('HSET', K_ANS, k, cjson.encode(answer))
  redis.call('ZADD', K_ANSDUE, fmt(NOW + retention), k)
end

-- Publishes `msg` (a table) to the other servers' backends, tagged with a message id
-- (from the secret seed, so it reveals nothing of it) and the origin, which skips its
-- own messages. A refused publish (an ACL without the channel, an old Redis without
-- SPUBLISH) must not abort a script that has already written: pcall, and report it.
local function publish(msg)
  if PUB == '' then return end
  PUBS = PUBS + 1
  msg.id = string.sub(redis.sha1hex(SEED .. ':m:' .. PUBS), 1, 24)
  msg.o = ORIGIN
  local body = cjson.encode(msg)
  local ok
  if PUB == 's' then
    ok = redis.pcall('SPUBLISH', P .. 'events', body)
  else
    ok = redis.pcall('PUBLISH', ROOT .. 'events', body)
  end
  if type(ok) == 'table' and ok.err then PUBERR = ok.err end
end

-- A fenced duty (a leader's sweep): refuses, returning the stored fence, when a
-- leader with a higher epoch has acted on this bucket; else raises the fence to
-- `epoch` and returns nil. Events the duty causes are published with its epoch.
local function fence(epoch)
  local cur = tonumber(redis.call('GET', K_FENCE) or '0')
  if cur > epoch then return cur end
  if cur < epoch then
    redis.call('SET', K_FENCE, fmt(epoch))
    publish({ fence = fmt(epoch), b = P })
  end
  EPOCH = fmt(epoch)
  return nil
end

-- The reply: the script's own result plus what happened. Events are published here,
-- in the same script as the change that caused them.
local function reply(r)
  if #EV > 0 then publish({ ev = EV, ep = EPOCH }) end
  if PUBERR then r.puberr = PUBERR end
  r.ev = EV
  r.ho = HANDOFFS
  r.now = fmt(NOW)
  return cjson.encode(r)
end
