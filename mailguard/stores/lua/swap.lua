-- mailguard swap: remember a value of (ns, key) for `ttl` seconds, return the old one.
-- Mirrors MemoryStore.swap exactly.  (lib.lua first.)
--
-- KEYS[1]  a string 'expires value'
-- ARGV     now, value, ttl
-- Returns the value replaced (nil when there was none or it had expired).

local previous = false
local state = redis.call('GET', KEYS[1])
if state then
  local space = string.find(state, ' ', 1, true)
  if tonumber(string.sub(state, 1, space - 1)) > now then
    previous = string.sub(state, space + 1)
  end
end
local seconds = tonumber(ARGV[3])
redis.call('SET', KEYS[1], num(now + seconds) .. ' ' .. ARGV[2], 'PX', ttl(seconds))
return previous
