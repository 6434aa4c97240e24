-- KEYS: lock, fence, q, qx, qc, qh, seq
-- ARGV: kind ('holder' | 'waiter'), id, clientId, channel
-- Called by a waiter that saw (CLIENT LIST ID) that connection `clientId` is gone; CLIENT is not
-- allowed in scripts, so the check is made first and this script only compares: it removes the
-- holder lockId `id` (or waiter `id`) only if it is still registered with that same connection,
-- then hands a free lock to the first waiter.
-- Returns 1 when removed, 0 when the state moved on meanwhile.
if ARGV[1] == 'holder' then
  local cur = redis.call('HMGET', K.lock, 'lockId', 'client')
  if cur[1] ~= ARGV[2] or cur[2] ~= ARGV[3] then
    return 0
  end
  redis.call('DEL', K.lock)
else
  if redis.call('HGET', K.qc, ARGV[2]) ~= ARGV[3] then
    return 0
  end
  drop_waiter(ARGV[2])
  if redis.call('EXISTS', K.lock) == 1 then
    return 1
  end
end
hand_to_head(ARGV[4])
return 1
