// A scripted session of node-redis 4 and of ioredis 5, the Node.js clients
// of Redis, against one server: prints one JSON line per step. Run against
// gridd and against redis-server by test_redis_node.sh, which compares the
// two outputs.
//
//   node redis_node_session.js PORT          (NODE_PATH: where the clients are)
//
// Sets are sorted (Redis keeps no order for them); errors are shown by
// their words.
'use strict';
const { createClient } = require('redis');
const Redis = require('ioredis');

const port = Number(process.argv[2]);
const steps = [];

async function step(name, fn) {
  try {
    steps.push([name, await fn()]);
  } catch (e) {
    steps.push([name, { error: e.constructor.name, message: String(e.message) }]);
  }
}

function plain(v) { // ioredis pipeline results: [[err, value], ...]
  return v && Array.isArray(v) ? v.map((x) => (Array.isArray(x) && x.length === 2 && x[0] === null ? x[1] : x)) : v;
}

async function nodeRedis() {
  const c = createClient({ url: `redis://127.0.0.1:${port}` });
  const other = createClient({ url: `redis://127.0.0.1:${port}` });
  c.on('error', () => {});
  other.on('error', () => {});
  await c.connect();
  await other.connect();
  await step('nr set/get', async () => [await c.set('nr:a', '1'), await c.get('nr:a')]);
  await step('nr incrBy', () => c.incrBy('nr:n', 5));
  await step('nr expire/ttl', async () => [await c.expire('nr:a', 100), await c.ttl('nr:a')]);
  await step('nr mGet', () => c.mGet(['nr:a', 'nr:n', 'nr:none']));
  await step('nr multi', () => c.multi().set('nr:t', 'x').append('nr:t', 'y').get('nr:t').incr('nr:c').exec());
  await step('nr multi with error', () => c.multi().set('nr:e', 'text').incr('nr:e').get('nr:e').exec());
  await step('nr pipeline', () => c.multi().set('nr:p', '1').get('nr:p').del('nr:p').execAsPipeline());
  await step('nr watch', async () => {
    await c.set('nr:w', '10');
    let tries = 0;
    for (;;) {
      try {
        return await c.executeIsolated(async (iso) => {
          await iso.watch('nr:w');
          const v = Number(await iso.get('nr:w'));
          if (tries === 0) await other.incr('nr:w'); // a change between WATCH and EXEC
          return iso.multi().set('nr:w', String(v * 2)).get('nr:w').exec();
        });
      } catch (e) {
        if (e.constructor.name !== 'WatchError') throw e;
        tries++;
      }
    }
  });
  await step('nr hash', async () => [
    await c.hSet('nr:thing', { temperature: '21.5', rpm: '1200' }),
    await c.hGetAll('nr:thing'),
    await c.hIncrBy('nr:thing', 'rpm', 30),
    await c.hGet('nr:thing', 'rpm'),
    await c.hDel('nr:thing', 'temperature'),
    await c.hLen('nr:thing'),
  ]);
  await step('nr set', async () => [await c.sAdd('nr:s', ['a', 'b', 'c']), (await c.sMembers('nr:s')).sort(),
    await c.sIsMember('nr:s', 'b')]);
  await step('nr list', async () => [await c.rPush('nr:l', ['1', '2', '3']), await c.lPop('nr:l'),
    await c.lRange('nr:l', 0, -1), await c.lLen('nr:l')]);
  await step('nr wrongtype', () => c.lPush('nr:thing', 'x'));
  await step('nr scanIterator', async () => {
    const keys = [];
    for await (const k of c.scanIterator({ MATCH: 'nr:*', COUNT: 5 })) keys.push(k);
    return keys.sort();
  });
  const db2 = createClient({ url: `redis://127.0.0.1:${port}`, database: 2 });
  db2.on('error', () => {});
  await db2.connect();
  await step('nr database 2', async () => [await db2.set('nr:a', 'two'), await db2.get('nr:a'), await c.get('nr:a')]);
  await db2.quit();
  await c.quit();
  await other.quit();
}

async function ioredis() {
  const r = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
  const other = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
  await step('io set/get', async () => [await r.set('io:a', '1'), await r.get('io:a')]);
  await step('io pipeline', async () => plain(await r.pipeline().set('io:p', 'x').get('io:p').incr('io:n').exec()));
  await step('io multi', async () => plain(await r.multi().set('io:t', 'x').append('io:t', 'y').get('io:t').exec()));
  await step('io multi with error', async () => {
    const res = await r.multi().set('io:e', 'text').incr('io:e').get('io:e').exec();
    return res.map(([err, v]) => (err ? `error: ${err.message}` : v));
  });
  await step('io queued error', async () => {
    try {
      return await r.multi().set('io:q', 'never').call('SET', 'io:q').exec();
    } catch (e) {
      return `error: ${e.message}`;
    }
  });
  await step('io watch aborted', async () => {
    await r.set('io:w', '1');
    await r.watch('io:w');
    await other.set('io:w', '2');
    return r.multi().set('io:w', '3').exec(); // null: aborted
  });
  await step('io watch ran', async () => {
    await r.watch('io:w');
    return plain(await r.multi().set('io:w', '4').get('io:w').exec());
  });
  await step('io hash', async () => [await r.hset('io:thing', { temperature: '21.5', rpm: '1200' }),
    await r.hgetall('io:thing'), await r.hincrbyfloat('io:thing', 'temperature', '0.25'),
    await r.hmget('io:thing', 'rpm', 'nope')]);
  await step('io sets', async () => [await r.sadd('io:s', 'a', 'b'), await r.sadd('io:s2', 'b', 'c'),
    (await r.sinter('io:s', 'io:s2')).sort(), (await r.sunion('io:s', 'io:s2')).sort()]);
  await step('io lists', async () => [await r.lpush('io:l', 'a', 'b', 'c'), await r.rpop('io:l', 2),
    await r.lmove('io:l', 'io:l2', 'LEFT', 'RIGHT'), await r.lrange('io:l2', 0, -1)]);
  await step('io scanStream', () => new Promise((resolve, reject) => {
    const keys = [];
    const s = r.scanStream({ match: 'io:*', count: 7 });
    s.on('data', (batch) => keys.push(...batch));
    s.on('end', () => resolve([...new Set(keys)].sort()));
    s.on('error', reject);
  }));
  await step('io getex/rename', async () => [await r.getex('io:a', 'EX', 100), await r.ttl('io:a'),
    await r.rename('io:a', 'io:b'), await r.get('io:b'), await r.exists('io:a')]);
  r.disconnect();
  other.disconnect();
}

(async () => {
  await nodeRedis();
  await ioredis();
  for (const s of steps) console.log(JSON.stringify(s));
})().catch((e) => {
  console.error(`redis_node_session: ${e.stack || e}`);
  process.exit(1);
});
