-- Put in front of every script (shared/mod.rs): Redis scripts cannot call one another.

-- Now in milliseconds, on Redis's own clock (the replicas' clocks never count).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A client's spend (every replica's fields) and holds in flight, expired holds dropped first.
local function standing(spend, holds, expiries, now)
  local expired = redis.call('ZRANGEBYSCORE', expiries, '-inf', now)
  for _, r in ipairs(expired) do redis.call('HDEL', holds, r) end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', expiries, '-inf', now) end
  local spent, held = 0, 0
  for _, v in ipairs(redis.call('HVALS', spend)) do spent = spent + tonumber(v) end
  for _, v in ipairs(redis.call('HVALS', holds)) do held = held + tonumber(v) end
  return spent, held
end
