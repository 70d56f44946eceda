-- prelude.lua: shared by every script. The scripts are one Redis function library
-- (scripts.rs builds it: this file, then each script's body as the function
-- `tflock_<version>_<script>`), loaded once per node with FUNCTION LOAD, so what is
-- defined here is built once, not on every call. Owns the key layout, the clock, the
-- grant order, settle, hand-off, grant and the event list. See docs/redis-design.md.
--
-- Every function is called with FCALL and one key; `begin` reads the common
-- arguments below into this call's state before the script's own code runs.
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

local SEP = '\31'

-- One call's state. The library is loaded once and its functions run many times, so
-- every call sets all of it first (begin(), from the function's KEYS and ARGV):
-- nothing of one call reaches the next.
local P, NOW, CLAIM, STARVE, MAXBOOST, SEED, PUB, ORIGIN, ROOT
-- What this call did, returned to the client: events to publish, hand-off count.
local EV, HANDOFFS, IDS
-- What this call already knows of a resource's queue: QUEUED[sk] is false when its
-- entries hash was seen missing (and nothing was added since), true when this call
-- added an entry, nil when not known. It spares the uncontended path the reads that
-- would find an empty queue again (hand-off lanes, owner index, gc).
local QUEUED
-- Set by a duty a leader runs under its epoch (fenced): published with its events.
local EPOCH
local PUBS, PUBERR
-- The bucket's keys (set by begin(), see below).
local K_DUE, K_EDL, K_IDX, K_TIDX, K_EIDX, K_ANS, K_ANSDUE, K_ENODE, K_FENCE, K_GEN

local function fmt(n) return string.format('%.0f', n) end

-- Key names of layout 2 (LAYOUT; docs/redis-design.md, "Keys"). `sk` is the
-- resource's key, printable: its escaped parts joined by KSEP (tflock-redis keys.rs).
local LAYOUT = '2'
local KSEP = '!'

-- Every call starts here: its clock, settings and the bucket's key names.
local function begin(keys, argv)
  P = keys[1]
  if argv[1] ~= '' then
    NOW = tonumber(argv[1])
  else
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  CLAIM = tonumber(argv[2])
  STARVE = tonumber(argv[3])
  if STARVE < 1 then STARVE = 1 end
  MAXBOOST = tonumber(argv[4])
  SEED = argv[5]
  PUB = string.sub(argv[6], 1, 1)
  ORIGIN = string.sub(argv[6], 2)
  -- The key prefix without the bucket's tag `{b:NN}:` (7 bytes).
  ROOT = string.sub(P, 1, #P - 7)
  EV, HANDOFFS, IDS, EPOCH, PUBS, PUBERR = {}, 0, 0, nil, 0, nil
  QUEUED = {}
  K_DUE = P .. 'expiries'          -- zset: resource key -> lease expiry
  K_EDL = P .. 'entry_deadlines'   -- zset: entry id -> when the sweeper drops it
  K_IDX = P .. 'resources'         -- zset (score 0): resource keys with a lock or a queue
  K_TIDX = P .. 'tokens'           -- zset (score 0): resource keys with a token counter
  K_EIDX = P .. 'entry_resources'  -- hash: entry id -> resource key
  K_ANS = P .. 'answers'           -- hash: owner SEP request_id -> answer JSON
  K_ANSDUE = P .. 'answers_due'    -- zset: answer key -> when it is forgotten
  K_ENODE = P .. 'enode'           -- hash: waiter entry id -> id of the node serving it
  K_FENCE = P .. 'fence'           -- string: highest leader epoch that acted on the bucket
  K_GEN = P .. 'gen'               -- hash: the bucket's generation marker (generation.lua)
end

-- Layout 1's token index name `tidx` holds a string saying where the data went
-- (upgrade.lua, and generation.lua for a bucket born at this layout): every grant of
-- a layout-1 build adds to `tidx` (its next_token) before it writes the lock, so
-- such a server fails there (WRONGTYPE) instead of granting a lock these scripts do
-- not see. `keep` leaves the name alone when it holds anything (data not upgraded
-- yet).
local function fence_layout1(keep)
  local note = 'moved: this tflock store uses key layout ' .. LAYOUT ..
    '; stop tflock servers of older builds (see docs/redis-design.md, Layout versions)'
  if keep then redis.call('SET', P .. 'tidx', note, 'NX') else redis.call('SET', P .. 'tidx', note) end
end

local function k_lock(sk) return P .. 'lock:' .. sk end
local function k_token(sk) return P .. 'token:' .. sk end
local function k_lane(p, sk) return P .. 'queue' .. p .. ':' .. sk end
local function k_entries(sk) return P .. 'entries:' .. sk end
local function k_ix(sk) return P .. 'owners:' .. sk end
local function k_wake(id) return P .. 'wake:' .. id end

-- Whether the resource has queue entries, read once per call (see QUEUED).
local function queued(sk)
  local q = QUEUED[sk]
  if q == nil then
    q = redis.call('EXISTS', k_entries(sk)) == 1
    QUEUED[sk] = q
  end
  return q
end

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
-- (listing reads these same fields with HMGET, reply.rs LISTED_FIELDS: keep the two
-- in step.)
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

-- How many entries of lane `lane` (base priority) have an effective priority of at
-- least `v`: effective() is min(lane + steps, lane + MAXBOOST, 3) with steps =
-- floor(waited / STARVE), non-increasing in enq, so they are a prefix of the lane by
-- score. Returns nil (none), true (the whole lane) or the highest enq that qualifies:
-- steps >= k (k >= 1) iff NOW - enq >= k * STARVE (an enq after NOW has waited 0).
local function eff_bound(lane, v)
  local k = v - lane
  if v > 3 or k > MAXBOOST then return nil end
  if k <= 0 then return true end
  return NOW - k * STARVE
end

-- Entries of one lane that go before an entry with effective priority `eff`,
-- enqueued at `enq`, id `id` (the entry itself never counts): every entry with a
-- higher effective priority, then those with the same one (a score range of the
-- lane) that were enqueued earlier, or at the same µs with a lower id.
local function ahead_in_lane(key, lane, eff, enq, id)
  local hi = eff_bound(lane, eff + 1) -- scores <= hi: effective priority > eff
  local eq = eff_bound(lane, eff)     -- scores <= eq: effective priority >= eff
  local n = 0
  if hi == true then return redis.call('ZCARD', key) end
  if hi then n = redis.call('ZCOUNT', key, '-inf', fmt(hi)) end
  if not eq then return n end
  -- Same effective priority: scores in (hi, eq], earlier than enq.
  local lo = hi and ('(' .. fmt(hi)) or '-inf'
  local top
  if eq == true or eq >= enq then top = '(' .. fmt(enq) else top = fmt(eq) end
  n = n + redis.call('ZCOUNT', key, lo, top)
  -- The same µs, inside that range: ordered by id.
  if (not hi or enq > hi) and (eq == true or enq <= eq) then
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, fmt(enq), fmt(enq))) do
      if m < id then n = n + 1 end
    end
  end
  return n
end

-- 1-based place of entry `id` in the grant order of its resource's queue (0 when it
-- is not queued), counted on the lanes (a few ZCOUNTs each), never by reading the
-- queue: O(log n) plus the entries enqueued in the same µs.
local function position(sk, id)
  local raw = redis.call('HGET', k_entries(sk), id)
  if not raw then return 0 end
  local e = cjson.decode(raw)
  local enq = tonumber(e.enq)
  local eff = effective(tonumber(e.prio), enq)
  local pos = 1
  for p = 0, 3 do pos = pos + ahead_in_lane(k_lane(p, sk), p, eff, enq, id) end
  return pos
end

-- The owner index `ix:<sk>` (hash), kept while the resource has entries:
--   v                      '1', so that the index exists whenever entries do
--   r:<owner> SEP <rid>    id of the entry made with that request id (every entry
--                          with one; a retry joins it, contract rule 8)
--   o:<owner>              id of the owner's reservation (one per owner, rule 5)
-- A field is only ever set when missing or naming an entry that is gone (the first
-- entry wins, as a scan in hash order found it), and removed when it names the
-- removed entry.
local function ix_set(k, sk, f, id)
  local cur = redis.call('HGET', k, f)
  if cur and redis.call('HEXISTS', k_entries(sk), cur) == 1 then return end
  redis.call('HSET', k, f, id)
end

local function ix_add(sk, e)
  local k = k_ix(sk)
  redis.call('HSET', k, 'v', '1')
  if e.rid and e.rid ~= '' then ix_set(k, sk, 'r:' .. e.owner .. SEP .. e.rid, e.id) end
  if e.kind == 'r' then ix_set(k, sk, 'o:' .. e.owner, e.id) end
end

-- A store written before the index (entries but no `ix`) gets it now, from one scan
-- of the entries in hash order; from then on it is kept up to date.
local function ensure_ix(sk)
  if not queued(sk) then return end
  if redis.call('EXISTS', k_ix(sk)) == 1 then return end
  local raw = redis.call('HGETALL', k_entries(sk))
  for i = 2, #raw, 2 do ix_add(sk, cjson.decode(raw[i])) end
end

-- The entry the index names under `field`, decoded, if it still exists and is that
-- owner's (with that request id, or a reservation); else nil.
local function ix_entry(sk, field)
  if not queued(sk) then return nil end
  ensure_ix(sk)
  local id = redis.call('HGET', k_ix(sk), field)
  if not id then return nil end
  local raw = redis.call('HGET', k_entries(sk), id)
  if not raw then return nil end
  return cjson.decode(raw)
end

-- Records a new entry (its record, lane, id index, owner index); the caller adds
-- its deadline (`edl`) and the resource to `idx`.
local function add_entry(sk, e)
  ensure_ix(sk)
  redis.call('HSET', k_entries(sk), e.id, cjson.encode(e))
  redis.call('ZADD', k_lane(e.prio, sk), e.enq, e.id)
  redis.call('HSET', K_EIDX, e.id, sk)
  ix_add(sk, e)
  QUEUED[sk] = true
end

-- Drops a resource from the index once it has neither lock nor queue. Its token
-- key stays: tokens are never reused. `unlocked`: the caller knows the lock is gone.
local function gc(sk, unlocked)
  if not queued(sk) and (unlocked or redis.call('EXISTS', k_lock(sk)) == 0) then
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
  QUEUED[sk] = nil
  if not queued(sk) then
    redis.call('DEL', k_ix(sk))
  else
    local k = k_ix(sk)
    local fields = {}
    if e.rid and e.rid ~= '' then fields[#fields + 1] = 'r:' .. e.owner .. SEP .. e.rid end
    if e.kind == 'r' then fields[#fields + 1] = 'o:' .. e.owner end
    for _, f in ipairs(fields) do
      if redis.call('HGET', k, f) == id then redis.call('HDEL', k, f) end
    end
  end
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
  local last = redis.call('GET', k_token(sk))
  local t = tonumber(last or '0') + 1
  if NOW > t then t = NOW end
  redis.call('SET', k_token(sk), fmt(t))
  -- A counter is indexed when it is first written (here or by import.lua), in the
  -- same script, so one that exists is in the index already.
  if not last then redis.call('ZADD', K_TIDX, 0, sk) end
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
    if not queued(sk) then return nil end
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
  -- Handed on, the resource is held; else its lock was just deleted.
  if not to then gc(sk, true) end
  return to
end

-- Brings a resource up to date: an expired lease ends and its queue is handed on; a
-- free lock with a queue (only after a repair) is handed on. Returns the live lock.
local function settle(sk)
  local l = read_lock(sk)
  if l then
    if tonumber(l.expires) > NOW then return l end
    release(sk, l, 'lock.expired')
  elseif queued(sk) then
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
