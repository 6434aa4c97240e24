-- KEYS: lock, fence, q, qx, qc, qh, seq
-- Read-only view for status: {lockId, token, client, holderJson, pttl, live waiters}, or {} when
-- the lock is not held.
local cur = redis.call('HMGET', K.lock, 'lockId', 'token', 'client', 'holder')
if not cur[1] then
  return {}
end
local live = redis.call('ZCOUNT', K.qx, '(' .. now_ms(), '+inf')
return {cur[1], cur[2], cur[3] or '0', cur[4] or '', redis.call('PTTL', K.lock), live}
