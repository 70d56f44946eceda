-- upgrade.lua: brings one bucket from key layout 1 to layout 2 (LAYOUT), in place
-- and in one step (docs/redis-design.md, "Layout versions"). Every lock, lease id,
-- queue entry, owner index, fencing token counter and answer is kept: only names
-- change, and every name keeps the bucket's hash tag, so nothing changes slot.
--
-- Layout 1 named a resource by its storage key (the four parts joined by the
-- invisible \x1f) and its bucket indexes idx, due, tidx, eidx, edl. Layout 2 names a
-- resource by its readable key (keys.rs resource_key), computed by the client: a
-- first call replies 'need' with every layout-1 storage key of the bucket, the
-- client sends them back paired with their new keys. The old index names are
-- deleted but `tidx`, left holding a string that says where the data went, so that
-- a server of an older build still running on this store fails on it (WRONGTYPE)
-- instead of granting locks where layout 2 does not look (prelude fence_layout1).
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   '1' for a dry run: count what would move, change nothing
-- ARGV[8..] pairs: a layout-1 storage key, its layout-2 resource key
--
-- Reply (JSON): r = 'current' (the bucket is at LAYOUT already; a dry run also
-- says so), 'need' (sks: the storage keys to pair; nothing was changed), 'ok'
-- (resources, entries, tokens moved; conflicts: records layout 2 already had, kept
-- and the layout-1 one left where it was; dry = true when nothing was changed); plus
-- ev/ho/now (see prelude's reply()).

local dry = ARGV[7] == '1'

local function kind(k) return redis.call('TYPE', k).ok end

-- Layout-1 indexes that hold data (a fence string left by an earlier upgrade, or
-- nothing, holds none).
local function old(name, want)
  local k = P .. name
  if kind(k) == want then return k end
  return nil
end

local gen = redis.call('HMGET', K_GEN, 'id', 'layout')
local idx, due, tidx = old('idx', 'zset'), old('due', 'zset'), old('tidx', 'zset')
local eidx, edl = old('eidx', 'hash'), old('edl', 'zset')
local has_old = idx or due or tidx or eidx or edl

-- Nothing of layout 1 here: a bucket marked with this layout, or one without a
-- marker (a new store: generation.lua marks it at this layout). A layout-1 marker
-- on an empty bucket is upgraded (fenced and marked) like any other.
if not has_old and (gen[2] == LAYOUT or not gen[1]) then return reply({ r = 'current' }) end

-- Every storage key the bucket names, and the pairs the client sent.
local sks, seen = {}, {}
local function note(sk)
  if not seen[sk] then
    seen[sk] = true
    sks[#sks + 1] = sk
  end
end
-- (Not ipairs over { idx, due, tidx }: it would stop at the first missing one.)
for _, k in pairs({ idx or false, due or false, tidx or false }) do
  if k then for _, sk in ipairs(redis.call('ZRANGE', k, 0, -1)) do note(sk) end end
end
if eidx then
  for _, sk in ipairs(redis.call('HVALS', eidx)) do note(sk) end
end
local new = {}
for i = 8, #ARGV - 1, 2 do new[ARGV[i]] = ARGV[i + 1] end
local missing = {}
for _, sk in ipairs(sks) do
  if not new[sk] then missing[#missing + 1] = sk end
end
if #missing > 0 then return reply({ r = 'need', sks = missing }) end

-- Per resource: layout-1 suffix -> layout-2 suffix.
local MOVES = {
  { 'lock:', 'lock:' }, { 'token:', 'token:' }, { 'entries:', 'entries:' },
  { 'ix:', 'owners:' }, { 'q0:', 'queue0:' }, { 'q1:', 'queue1:' },
  { 'q2:', 'queue2:' }, { 'q3:', 'queue3:' },
}
local resources, entries, tokens, conflicts = 0, 0, 0, 0
for _, sk in ipairs(sks) do
  local nk = new[sk]
  resources = resources + 1
  local has_token = redis.call('EXISTS', P .. 'token:' .. sk) == 1
  if has_token then tokens = tokens + 1 end
  entries = entries + redis.call('HLEN', P .. 'entries:' .. sk)
  if not dry then
    for _, m in ipairs(MOVES) do
      local from, to = P .. m[1] .. sk, P .. m[2] .. nk
      if redis.call('EXISTS', from) == 1 then
        if redis.call('EXISTS', to) == 0 then
          redis.call('RENAME', from, to)
        elseif m[1] == 'token:' then
          -- Both layouts counted tokens here (servers of both builds ran at once):
          -- the higher one, so that tokens never go back.
          local a = tonumber(redis.call('GET', from) or '0')
          local b = tonumber(redis.call('GET', to) or '0')
          redis.call('SET', to, fmt(math.max(a, b)))
          redis.call('DEL', from)
        else
          -- Layout 2 already has this record (written by a newer server while an
          -- older one still ran): it is the one newer servers have been serving.
          conflicts = conflicts + 1
        end
      end
    end
    -- Every counter moved goes in the tokens index (export reads it; prelude
    -- next_token indexes only the counters it creates): a store written before
    -- layout 1 had `tidx` holds counters that only `idx`, `due` or `eidx` lead to.
    -- (A counter only layout 2 wrote was indexed when it was created.)
    if has_token then redis.call('ZADD', K_TIDX, 0, nk) end
  end
end
if dry then
  return reply({ r = 'ok', dry = true, resources = resources, entries = entries, tokens = tokens })
end

-- The bucket's indexes, with the new keys as members (and values).
local function rekey_zset(from, to)
  if not from then return end
  local raw = redis.call('ZRANGE', from, 0, -1, 'WITHSCORES')
  for i = 1, #raw, 2 do redis.call('ZADD', to, raw[i + 1], new[raw[i]]) end
end
rekey_zset(idx, K_IDX)
rekey_zset(due, K_DUE)
rekey_zset(tidx, K_TIDX)
if eidx then
  local raw = redis.call('HGETALL', eidx)
  for i = 1, #raw, 2 do redis.call('HSET', K_EIDX, raw[i], new[raw[i + 1]]) end
end
if edl then
  -- Members are entry ids: the same in both layouts.
  local raw = redis.call('ZRANGE', edl, 0, -1, 'WITHSCORES')
  for i = 1, #raw, 2 do redis.call('ZADD', K_EDL, raw[i + 1], raw[i]) end
end
for _, name in ipairs({ 'idx', 'due', 'eidx', 'edl' }) do redis.call('DEL', P .. name) end
fence_layout1()
redis.call('HSET', K_GEN, 'layout', LAYOUT)
return reply({
  r = 'ok', resources = resources, entries = entries, tokens = tokens, conflicts = conflicts,
})
