-- Puts this replica's spend of the month back from its own ledger where Redis has less
-- (Redis restarted empty, or settles lost while it was away), then marks it done.
-- KEYS: 1 this replica's seeded marker, then one spend hash per client.
-- ARGV: 1 replica, then the ledger's spend per client (same order).
for i = 2, #KEYS do
  local have = tonumber(redis.call('HGET', KEYS[i], ARGV[1]) or '0')
  local ledger = tonumber(ARGV[i])
  if ledger > have then redis.call('HSET', KEYS[i], ARGV[1], ledger) end
end
redis.call('SET', KEYS[1], '1', 'EX', 40 * 86400)
return 1
