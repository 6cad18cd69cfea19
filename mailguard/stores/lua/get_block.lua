-- mailguard get_block: the live block of (ns, key), if any.  Writes only to
-- delete an ended block (blocks have no TTL: every script that reads one
-- deletes it once it has ended).
-- (lib.lua first.)
--
-- KEYS[1]  the block hash
-- ARGV     now
-- Returns 'now since until reason', or 'now' when there is no live block.

local b = redis.call('HMGET', KEYS[1], 'until', 'since', 'reason')
if b[1] and tonumber(b[1]) > now then
  return num(now) .. ' ' .. b[2] .. ' ' .. b[1] .. ' ' .. (b[3] or '')
elseif b[1] then
  redis.call('DEL', KEYS[1])
end
return num(now)
