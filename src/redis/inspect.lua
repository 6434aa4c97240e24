-- KEYS: lock, qx
-- Read-only view for status: {lockId, token, client, holderJson, pttl, live waiters}, or {} when
-- the lock is not held.
local cur = redis.call('HMGET', KEYS[1], 'lockId', 'token', 'client', 'holder')
if not cur[1] then
  return {}
end
local live = redis.call('ZCOUNT', KEYS[2], '(' .. now_ms(), '+inf')
return {cur[1], cur[2], cur[3] or '0', cur[4] or '', redis.call('PTTL', KEYS[1]), live}
