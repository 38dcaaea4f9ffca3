-- Pushes back the expiry of what live requests hold: KEYS[i] is a zset holding ARGV[i + 1]
-- (a request id) until now + ARGV[1] ms. Only entries still there are touched.
local until_ms = now_ms() + tonumber(ARGV[1])
for i, k in ipairs(KEYS) do redis.call('ZADD', k, 'XX', until_ms, ARGV[i + 1]) end
return #KEYS
