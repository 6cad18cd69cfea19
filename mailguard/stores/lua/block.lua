-- mailguard block: block (ns, key) for `seconds` (replacing any block it has).
-- (lib.lua first.)
--
-- KEYS[1]  the block hash: kind, key, reason, since, until; no TTL (an index
--          the store keeps beside it says when to remove it)
-- ARGV     now, seconds, reason, kind, key
-- Returns now (the block's `since`).  A block that has already ended
-- (seconds <= 0) removes the key instead, as in MemoryStore.

local seconds = tonumber(ARGV[2])
local untl = now + seconds
if untl > now then
  redis.call('HSET', KEYS[1], 'kind', ARGV[4], 'key', ARGV[5], 'reason', ARGV[3],
    'since', num(now), 'until', num(untl))
  redis.call('PERSIST', KEYS[1])   -- no TTL: never evicted (see RedisStore, Blocks)
else
  redis.call('DEL', KEYS[1])
end
return num(now)
