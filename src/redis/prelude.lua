-- Shared by every script (prepended at compile time). Keys of one lock, all in one hash slot, in
-- this order in KEYS (refresh passes the lock alone):
--   lock  : hash {lockId, token, client, holder}, PEXPIRE = the lease
--   fence : string, the highest fencing token ever granted for this lock (never expires)
--   q     : zset waiterId -> arrival number (arrival order across machines)
--   qx    : zset waiterId -> expiry (server ms); a waiter that stops renewing drops out
--   qc    : hash waiterId -> the waiter's CLIENT ID, so others can see it is gone
--   qh    : hash waiterId -> 'ttlMs tokenFloor holderJson', what a grant to it needs
--   seq   : string, the arrival counter
local K = { lock = KEYS[1], fence = KEYS[2], q = KEYS[3], qx = KEYS[4], qc = KEYS[5], qh = KEYS[6],
  seq = KEYS[7] }

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function drop_waiter(w)
  redis.call('ZREM', K.q, w)
  redis.call('ZREM', K.qx, w)
  redis.call('HDEL', K.qc, w)
  redis.call('HDEL', K.qh, w)
end

-- Removes the waiters whose own lease ran out.
local function purge(now)
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', K.qx, '-inf', now)) do
    drop_waiter(w)
  end
end

-- The first waiter in arrival order and its client id, or false.
local function head()
  local h = redis.call('ZRANGE', K.q, 0, 0)[1]
  if h then
    return h, redis.call('HGET', K.qc, h) or '0'
  end
  return false, '0'
end

-- Grants the lock to `id` on connection `client`. The fencing token is issued in the same step:
-- max(counter, floor) + 1, so it rises on every grant. The floor is the token recorded beside the
-- data, which knows only the grants that committed: when the counter is gone (a restart without
-- persistence, a flush) while the floor shows the lock was used, grants made before the loss may
-- be outstanding above the floor, so the count resumes 2^20 above it instead of reusing theirs.
-- The counter moves with one INCR, which returns 1 exactly when the counter was gone (tokens start
-- at 1); only a token raised to the floor is written back.
local function grant(id, client, ttl, holder, floor)
  local base = tonumber(floor)
  local counted = redis.call('INCR', K.fence)
  local token = counted
  if counted == 1 and base > 0 then
    token = base + 1048576
  elseif counted <= base then
    token = base + 1
  end
  local text = string.format('%d', token)
  if token ~= counted then
    redis.call('SET', K.fence, text)
  end
  redis.call('HSET', K.lock, 'lockId', id, 'token', text, 'client', client, 'holder', holder)
  redis.call('PEXPIRE', K.lock, ttl)
  return token
end

-- The lock is free: hands it to the first waiter in this same step and tells that waiter alone
-- (`<id> <token>` on the channel), so the grant costs it no request of its own and the others
-- stay asleep. A waiter queued without its request (an older client) is only woken by id.
local function hand_to_head(channel)
  -- Nobody queued: the queue's keys are written and expire together, so nothing to purge either.
  if redis.call('EXISTS', K.q) == 0 then
    return
  end
  local now = now_ms()
  purge(now)
  local h, client = head()
  if not h then
    return
  end
  local request = redis.call('HGET', K.qh, h)
  if not request then
    redis.call('PUBLISH', channel, h)
    return
  end
  local ttl, floor, holder = string.match(request, '^(%d+) (%d+) (.*)$')
  local token = grant(h, client, ttl, holder, floor)
  drop_waiter(h)
  redis.call('PUBLISH', channel, h .. ' ' .. string.format('%d', token))
end
