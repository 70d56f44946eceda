-- prelude.lua: prepended to write.lua, read.lua and lock.lua at build time (each is
-- still one EVALSHA). Owns the key layout of one state and the number comparison.
--
-- KEYS[1]  the state's key prefix `<key_prefix>tfstate:{<16 hex of sha256(name)>}:`;
--          every key a script touches is that prefix plus a suffix, so all of them
--          share the hash tag's Cluster slot (the tag holds no user text):
--            meta   hash: name, fence, lock (the record's JSON), lock_digest,
--                   lock_token, lock_pub, last (version counter), first (oldest kept
--                   version), cur (current version, 0: none), cur_serial,
--                   cur_lineage, max_serial (highest serial ever stored)
--            vm     hash: version -> that version's meta JSON (kept versions only)
--            v:<n>  string: version n's document (none for a delete marker)
-- ARGV[1]  the state name, checked against meta's: two names whose digests share 16
--          hex digits would share keys, so the second is refused, never mixed in.
--
-- Numbers: tokens and serials are u64 and a Lua number is a double (exact below
-- 2^53 only), so they stay decimal strings here (as Rust formats them: no sign, no
-- leading zero) and are compared with numcmp. Only the version counters, small and
-- kept by HINCRBY, are Lua numbers.

local K = KEYS[1]
local NAME = ARGV[1]
local META = K .. 'meta'
local VM = K .. 'vm'

local function vkey(n)
  return K .. 'v:' .. string.format('%d', n)
end

local function fmt(n)
  return string.format('%d', n)
end

-- -1, 0 or 1 as decimal string a is below, equal to or above b.
local function numcmp(a, b)
  if #a ~= #b then
    return (#a < #b) and -1 or 1
  end
  if a == b then
    return 0
  end
  return (a < b) and -1 or 1
end

local function hget(field)
  return redis.call('HGET', META, field)
end

-- The reply when the keys belong to another name (see ARGV[1]), else nil.
local function collision()
  local stored = hget('name')
  if stored and stored ~= NAME then
    return '{"r":"collision"}'
  end
  return nil
end
