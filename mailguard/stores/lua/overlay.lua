-- overlay: compare-and-set the live configuration document
-- (mailguard.stores.overlay; the store does not read the document).
--
-- KEYS[1]  the document's hash (fields 'version' and 'doc'); no expiry:
--          like a block, it must never be evicted by a TTL
-- ARGV[1]  the time (lib.lua; unused here)
-- ARGV[2]  the version the writer read
-- ARGV[3]  the new document (JSON text)
--
-- Returns {1, new version} when the version was still ARGV[2], else
-- {0, current version} and nothing is written.
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current == nil or current ~= tonumber(ARGV[2]) then
  return {0, current or -1}
end
redis.call('HSET', KEYS[1], 'version', current + 1, 'doc', ARGV[3])
return {1, current + 1}
