-- KEYS: lock
-- ARGV: lockId, token, clientId, ttlMs ('0' = leave the lease)
-- Compare-and-PEXPIRE: touches the lock only while it is still ours (same lockId and token), so
-- a lock that expired is never re-acquired by a refresh. Also re-registers the connection that
-- holds it (it changes when the connection is re-established).
-- Returns {1, pttl} when ours, {0, 'expired'} or {0, 'taken', otherToken}.
local cur = redis.call('HMGET', KEYS[1], 'lockId', 'token')
if not cur[1] then
  return {0, 'expired'}
end
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then
  return {0, 'taken', cur[2]}
end
redis.call('HSET', KEYS[1], 'client', ARGV[3])
if ARGV[4] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return {1, redis.call('PTTL', KEYS[1])}
