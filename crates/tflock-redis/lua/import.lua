-- import.lua: Import of one resource of a snapshot, atomically (the client has
-- validated the whole snapshot before the first call). The embedded store's rules
-- (tflock-embedded state.rs `import`): the token counter goes up to at least the
-- snapshot's; the lock is installed when the resource is free (the same lease
-- already there: unchanged; another lease: a conflict unless overwrite); a lock whose
-- token the store already passed gets a new, higher one; reservations not yet
-- present are added (the client sends no waiters). A dry run changes nothing and
-- only counts.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   resource key
-- ARGV[8]   '1' for a dry run
-- ARGV[9]   '1' to replace a lock held under another lease
-- ARGV[10]   the snapshot's last token for the resource
-- ARGV[11]  the lock as JSON (owner user pull meta prio lease token acquired expires
--           ttl, every value a string; lease '' for none), or ''
-- ARGV[12]  the reservations as a JSON list, each as entries:<sk> stores it
--
-- Reply (JSON): imported, unchanged, expired, queued, retokened (0 or more),
-- conflict (bool); plus ev/ho/now.

local sk = ARGV[7]
local dry, overwrite = ARGV[8] == '1', ARGV[9] == '1'
local last = tonumber(ARGV[10])
local lock = nil
if ARGV[11] ~= '' then lock = cjson.decode(ARGV[11]) end
local entries = cjson.decode(ARGV[12])

-- A dry run does not settle (that would write); an expired lease counts as gone, as
-- settling would make it.
local cur
if dry then
  cur = read_lock(sk)
  if cur and tonumber(cur.expires) <= NOW then cur = nil end
else
  cur = settle(sk)
end

local before = tonumber(redis.call('GET', k_token(sk)) or '0')
local counter = math.max(before, last)
local r = { imported = 0, unchanged = 0, expired = 0, queued = 0, retokened = 0, conflict = false }

if lock then
  if tonumber(lock.expires) <= NOW then
    r.expired = 1
  elseif cur and lock.lease ~= '' and cur.lease == lock.lease then
    r.unchanged = 1
  elseif cur and not overwrite then
    r.conflict = true
  else
    local token = tonumber(lock.token)
    if token <= before then
      -- The grant rule (prelude next_token): above the counter, floored at the clock.
      token = counter + 1
      if NOW > token then token = NOW end
      counter = token
      r.retokened = 1
    end
    if token > counter then counter = token end
    r.imported = 1
    if not dry then
      if cur and cur.entry ~= '' then redis.call('DEL', k_wake(cur.entry)) end
      local lease = lock.lease
      if lease == '' then lease = new_id(32) end
      redis.call('HSET', k_lock(sk),
        'owner', lock.owner, 'user', lock.user, 'pull', lock.pull, 'meta', lock.meta,
        'prio', lock.prio, 'lease', lease, 'token', fmt(token), 'acquired', lock.acquired,
        'expires', lock.expires, 'ttl', lock.ttl, 'claim', '0', 'entry', '', 'rid', '')
      redis.call('ZADD', K_DUE, lock.expires, sk)
      redis.call('ZADD', K_IDX, 0, sk)
      emit('lock.acquired', sk, lock.owner, fmt(token), nil)
    end
  end
end

for _, e in ipairs(entries) do
  if redis.call('HEXISTS', K_EIDX, e.id) == 0 and tonumber(e.dl) > NOW then
    r.queued = r.queued + 1
    if not dry then
      add_entry(sk, e)
      redis.call('ZADD', K_EDL, e.dl, e.id)
      redis.call('ZADD', K_IDX, 0, sk)
      emit('queue.entered', sk, e.owner, nil, e.id)
    end
  end
end

if not dry then
  if counter > before then redis.call('SET', k_token(sk), fmt(counter)) end
  if counter > 0 then redis.call('ZADD', K_TIDX, 0, sk) end
  -- A free resource that got reservations hands the lock on now, as after any change.
  settle(sk)
  gc(sk)
end
return reply(r)
