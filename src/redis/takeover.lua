-- KEYS: lock, q, qx, qc
-- ARGV: kind ('holder' | 'waiter'), id, clientId, channel
-- Called by a waiter that saw (CLIENT LIST ID) that connection `clientId` is gone; CLIENT is not
-- allowed in scripts, so the check is made first and this script only compares: it removes the
-- holder lockId `id` (or waiter `id`) only if it is still registered with that same connection.
-- Returns 1 when removed, 0 when the state moved on meanwhile.
local lock, q, qx, qc = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if ARGV[1] == 'holder' then
  local cur = redis.call('HMGET', lock, 'lockId', 'client')
  if cur[1] ~= ARGV[2] or cur[2] ~= ARGV[3] then
    return 0
  end
  redis.call('DEL', lock)
else
  if redis.call('HGET', qc, ARGV[2]) ~= ARGV[3] then
    return 0
  end
  drop_waiter(q, qx, qc, ARGV[2])
  if redis.call('EXISTS', lock) == 1 then
    return 1
  end
end
purge(q, qx, qc, now_ms())
wake_head(q, qc, ARGV[4])
return 1
