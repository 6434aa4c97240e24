-- Shared by every script (prepended at compile time). Keys of one lock, all in one hash slot:
--   lock  : hash {lockId, token, client, holder, grantedAt}, PEXPIRE = the lease
--   fence : string, the highest fencing token ever granted for this lock (never expires)
--   q     : zset waiterId -> arrival number (arrival order across machines)
--   qx    : zset waiterId -> expiry (server ms); a waiter that stops renewing drops out
--   qc    : hash waiterId -> the waiter's CLIENT ID, so others can see it is gone
--   seq   : string, the arrival counter
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function drop_waiter(q, qx, qc, w)
  redis.call('ZREM', q, w)
  redis.call('ZREM', qx, w)
  redis.call('HDEL', qc, w)
end

-- Removes the waiters whose own lease ran out.
local function purge(q, qx, qc, now)
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', qx, '-inf', now)) do
    drop_waiter(q, qx, qc, w)
  end
end

-- The first waiter in arrival order and its client id, or false.
local function head(q, qc)
  local h = redis.call('ZRANGE', q, 0, 0)[1]
  if h then
    return h, redis.call('HGET', qc, h) or '0'
  end
  return false, '0'
end

-- Tells the first waiter (by id, so the others stay asleep) that the lock is free.
local function wake_head(q, qc, channel)
  local h = head(q, qc)
  if h then
    redis.call('PUBLISH', channel, h)
  end
end
