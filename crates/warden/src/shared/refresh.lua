-- Pushes back the expiry of what live requests hold: KEYS[i] is a zset holding ARGV[i + 1]
-- (a request id) until now + ARGV[1] ms. Only entries still there are touched.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
for i, k in ipairs(KEYS) do redis.call('ZADD', k, 'XX', until_ms, ARGV[i + 1]) end
return #KEYS
