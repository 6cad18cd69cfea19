-- mailguard unblock: lift one block.  (lib.lua first.)
--
-- KEYS[1]  the block hash
-- ARGV     now, key ('' = any)
-- The hash is deleted when its `key` field matches; returns 1 when the block
-- deleted was live, 0 otherwise (none, ended, or another key's).

local b = redis.call('HMGET', KEYS[1], 'until', 'key')
if not b[1] then
  return 0
end
if ARGV[2] ~= '' and b[2] ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1])
if tonumber(b[1]) > now then
  return 1
end
return 0
