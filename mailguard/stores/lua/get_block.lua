-- mailguard get_block: the live block of (ns, key), if any.  Read-only.
-- (lib.lua first.)
--
-- KEYS[1]  the block hash
-- ARGV     now
-- Returns 'now since until reason', or 'now' when there is no live block.

local b = redis.call('HMGET', KEYS[1], 'until', 'since', 'reason')
if b[1] and tonumber(b[1]) > now then
  return num(now) .. ' ' .. b[2] .. ' ' .. b[1] .. ' ' .. (b[3] or '')
end
return num(now)
