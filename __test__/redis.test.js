'use strict'
// The Redis backend end to end (issue 11's figures), against real redis-server processes on
// loopback ports of their own: children select it with FLOWFORGE_LOCK_BACKEND=redis://…, run under
// --unhandled-rejections=strict (a lost lock must never become an unhandled rejection), and every
// dangerous instant is an event a child prints (READ, HOLDING, TOKEN …), never a sleep.
// Small counts by default; FFL_REDIS_FULL=1 runs the issue's full counts (4 hosts × 200 updates,
// 100 frozen-holder rounds). Children: fixtures/redis-counter.js (read-increment-write loops with
// an O_EXCL overlap detector and the token history in the file) and fixtures/etcd-worker.js (a
// holder driven line by line; it only speaks the public API, so it serves every lock server).
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { makeProject, startFixture, freePort, PACKAGE_ROOT } = require('./helpers')
const { startRedis } = require('./redis-server')
const { failpointBinary, failpointEnv } = require('./failpoint-binary')
const { childStarter, backend, runCounters, acquired, infoOf, untilQueued, killHolderBeforeWaiter, askUnreachable, frozenRounds, cutOffHolder } = require('./children')
const { proxyTo } = require('./tcp-proxy')

const FULL = process.env.FFL_REDIS_FULL === '1'
const HOST_UPDATES = FULL ? 200 : 25
const FROZEN_ROUNDS = FULL ? 100 : 3
const canUnshare = process.getuid() === 0 && spawnSync('unshare', ['--uts', 'true']).status === 0

const start = childStarter({ nodeArgs: ['--unhandled-rejections=strict'] })

function counterFile(root, count = 0) {
  const file = path.join(root, 'counter.json')
  fs.writeFileSync(file, JSON.stringify({ count, tokens: [] }))
  return file
}

/** A counter file of a project of its own whose lock-config.json names the lock server `url`. */
function servedBy(url) {
  const root = makeProject()
  fs.writeFileSync(path.join(root, '.flowforge', 'lock-config.json'), JSON.stringify({ backend: url }))
  return counterFile(root)
}

const read = (file) => JSON.parse(fs.readFileSync(file, 'utf8'))
const linesOf = (workers, prefix) => workers.flatMap((w) => w.lines.filter((l) => l.startsWith(prefix)))
const codesOf = (lines) => [...new Set(lines.map((l) => l.split(' ')[1]))]

/** The file is whole and exact, and its history is the fencing invariant: one token per
 * commit, strictly rising in commit order (no token reused, none going backwards). */
function expectExactHistory(file, total, workers) {
  const data = read(file)
  expect(data.count).toBe(total)
  expect(data.tokens).toHaveLength(total)
  for (let i = 1; i < data.tokens.length; i++) {
    if (!(data.tokens[i] > data.tokens[i - 1])) {
      throw new Error(`token ${data.tokens[i]} committed after token ${data.tokens[i - 1]} (commits ${i} and ${i + 1} of ${data.tokens.length}): two holders committed under one token, or an older one after a newer`)
    }
  }
  expect(linesOf(workers, 'COMMIT ').map((l) => Number(l.split(' ')[1])).sort((a, b) => a - b)).toEqual(data.tokens)
}

/** A proxy (tcp-proxy.js) in front of the Redis server on loopback `port`; `url(query)` is the
 * backend URL that goes through it. */
async function redisProxy(port) {
  const proxy = await proxyTo(`127.0.0.1:${port}`)
  return { ...proxy, url: (query) => `redis://${proxy.endpoint}?${query}` }
}

describe('Redis backend', () => {
  let redis
  beforeAll(async () => {
    redis = await startRedis()
  }, 60000)
  afterAll(() => redis && redis.stop())

  test('the backend is chosen by configure(), then FLOWFORGE_LOCK_BACKEND, then .flowforge/lock-config.json, then file', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const config = path.join(root, '.flowforge', 'lock-config.json')
    /** One acquire (one try) in a fresh process: 'ACQUIRED', or the error's code. */
    const tryLock = (env, configured) => {
      const lib = JSON.stringify(path.join(PACKAGE_ROOT, 'file-lock'))
      const script = `const l = require(${lib}); ${configured ? `l.configure({ backend: ${JSON.stringify(configured)} });` : ''}
        l.acquireLock(${JSON.stringify(file)}, 0).then(() => console.log('ACQUIRED'), (e) => console.log(e.code + ' ' + e.message))`
      const { FLOWFORGE_LOCK_BACKEND: _, ...inherited } = process.env
      return spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...inherited, ...env } }).stdout.trim()
    }
    // lock-config.json chooses Redis: a holder there excludes every process that reads it, and
    // no file-backend lock is involved (a process told to use the file backend gets the lock).
    fs.writeFileSync(config, JSON.stringify({ backend: redis.url }))
    const holder = await startFixture('hold-lock', [file], 'LOCKED', { env: { FLOWFORGE_LOCK_BACKEND: '' } })
    try {
      expect(tryLock({})).toMatch(/^ELOCKTIMEOUT /)
      expect(tryLock({ FLOWFORGE_LOCK_BACKEND: 'file' })).toBe('ACQUIRED')
      expect(tryLock({ FLOWFORGE_LOCK_BACKEND: redis.url }, 'file')).toBe('ACQUIRED')
      expect(tryLock({ FLOWFORGE_LOCK_BACKEND: 'file' }, redis.url)).toMatch(/^ELOCKTIMEOUT /)
    } finally {
      holder.child.kill('SIGKILL')
      await holder.exited
    }
    // A lock-config.json that is not valid is an error naming it, never a silent fall back to files.
    for (const bad of ['{ "backend": ', '{ "backend": 6379 }', '{ "backend": "memcached://h:1" }']) {
      fs.writeFileSync(config, bad)
      expect(tryLock({})).toMatch(new RegExp(`^ELOCKCONFIG ${config.replace(/[.]/g, '\\.')} is not a valid lock configuration`))
    }
  })

  test('4 hosts × N locked read-increment-writes of one file: exact, never two holders', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const marker = path.join(root, 'holder.marker')
    if (!canUnshare) console.log('redis hosts test: not root (or no unshare --uts): the 4 workers share this hostname')
    const workers = [1, 2, 3, 4].map((i) =>
      start('redis-counter', [file, HOST_UPDATES, marker], backend(`${redis.url}?ttl=5000&refresh=1000`), {
        host: canUnshare ? `ffl-redis-host-${i}` : undefined,
      }),
    )
    const started = Date.now()
    await runCounters(workers)
    console.log(`redis: 4 hosts × ${HOST_UPDATES} updates in ${Date.now() - started} ms`)
    expect(workers.map((w) => w.lines.find((l) => l.startsWith('DONE')))).toEqual(Array(4).fill(`DONE ${HOST_UPDATES}`))
    expect(linesOf(workers, 'OVERLAP')).toEqual([])
    expect(linesOf(workers, 'ERR')).toEqual([])
    expectExactHistory(file, 4 * HOST_UPDATES, workers)
    if (canUnshare) expect(new Set(workers.map((w) => w.lines.find((l) => l.startsWith('HOST ')))).size).toBe(4)
  }, 240000)

  test('a SIGKILLed holder is released at once, not after its TTL: the queued waiter takes over with a higher token', async () => {
    const root = makeProject()
    const file = counterFile(root)
    // A TTL far beyond the waiter's own timeout: the waiter can only get the lock in time
    // because Redis saw the dead holder's connection close.
    const url = `${redis.url}?ttl=120000&refresh=20000`
    const holder = start('etcd-worker', [file], backend(url))
    const next = start('etcd-worker', [file], backend(url))
    const { first, killedAt } = await killHolderBeforeWaiter(holder, next)
    const line = await next.until(/^(ACQUIRED|ERR) /)
    console.log(`redis: SIGKILLed holder replaced after ${Date.now() - killedAt} ms (ttl 120000 ms, waiter timeout 30000 ms)`)
    expect(line).toMatch(/^ACQUIRED /)
    expect(Number(line.split(' ')[2])).toBeGreaterThan(first)
    next.send('release')
    await next.until(/^RELEASED true$/)
    next.child.stdin.end()
    await next.exited
  }, 60000)

  /** Resolves once Redis's queue for `key` (the zset `<key>:q`) holds `n` waiters: asked of the
   * server itself, one round trip per look, so a waiter counts once its place is taken. */
  async function queuedInRedis(key, n) {
    while (Number(await redis.command('ZCARD', `${key}:q`)) < n);
  }

  test('arrival order across processes: waiters are granted in the order they queued, and a releaser asking again at once comes last', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const env = backend(`${redis.url}?ttl=30000&refresh=5000`)
    const holder = start('etcd-worker', [file], env)
    await holder.until(/^READY$/)
    const first = await acquired(holder)
    const { key } = await infoOf(holder)
    const waiters = []
    for (let i = 0; i < 4; i++) {
      const w = start('etcd-worker', [file], env)
      await w.until(/^READY$/)
      w.send('acquire 60000')
      // The next one starts only once this one has its place in Redis's queue.
      await queuedInRedis(key, i + 1)
      waiters.push(w)
    }
    const all = [...waiters, holder]
    const order = []
    const grants = all.map((w, i) =>
      w.until(/^ACQUIRED /).then((line) => {
        order.push({ who: i === waiters.length ? 'releaser' : i, token: Number(line.split(' ')[2]) })
        w.send('release')
      }),
    )
    // Release and ask again at once (the fixture runs the two commands back to back).
    holder.send('release')
    holder.send('acquire 60000')
    await Promise.all(grants)
    await holder.until(/^RELEASED true$/)
    expect(order.map((o) => o.who)).toEqual([0, 1, 2, 3, 'releaser'])
    expect(order.map((o) => o.token)).toEqual([first + 1, first + 2, first + 3, first + 4, first + 5])
    for (const w of all) w.child.stdin.end()
    await Promise.all(all.map((w) => w.exited))
  }, 120000)

  test('a single try (timeout 0) on a held lock leaves no place behind in Redis’s queue', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const env = backend(`${redis.url}?ttl=30000&refresh=5000`)
    const holder = start('etcd-worker', [file], env)
    const trier = start('etcd-worker', [file], env)
    await Promise.all([holder.until(/^READY$/), trier.until(/^READY$/)])
    await acquired(holder)
    const { key } = await infoOf(holder)
    trier.send('acquire 0')
    expect(await trier.until(/^(ACQUIRED|ERR) /)).toMatch(/^ERR ELOCKTIMEOUT /)
    expect(Number(await redis.command('ZCARD', `${key}:q`))).toBe(0)
    expect((await infoOf(holder)).queueLength).toBe(0)
    holder.send('release')
    await holder.until(/^RELEASED true$/)
    trier.send('acquire 0')
    expect(await trier.until(/^(ACQUIRED|ERR) /)).toMatch(/^ACQUIRED /)
    for (const w of [holder, trier]) w.child.stdin.end()
    await Promise.all([holder.exited, trier.exited])
  }, 60000)

  /** The commands clients sent themselves (never from inside a script) since the last CONFIG
   * RESETSTAT, from INFO commandstats: `{ evalsha: 1, … }` (as client_commands in
   * src/redis/tests.rs; the test's own CONFIG and INFO are left out). */
  async function clientCommands() {
    const direct = ['evalsha', 'eval', 'script|load', 'client|id', 'client|list', 'subscribe', 'unsubscribe', 'ping', 'hello', 'client|setinfo', 'select']
    const calls = {}
    for (const [, name, n] of String(await redis.command('INFO', 'commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
      if (direct.includes(name)) calls[name] = Number(n)
    }
    return calls
  }

  test('an uncontended acquire is answered on the caller’s thread in one round trip; a refused one leaves no place and queues as before', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const env = backend(`${redis.url}?ttl=60000&refresh=20000`)
    // tryAcquire is what acquireLock asks first, synchronously: a lockId returned from it was
    // granted on this (Node's) thread. The first acquire of a process connects, so it waits
    // on the waiting thread; after it, a pooled connection is idle.
    const script = `
      const { acquireLock, releaseLock } = require(${JSON.stringify(path.join(__dirname, '..', 'file-lock'))})
      const native = require(${JSON.stringify(path.join(__dirname, '..', 'native.js'))})
      const file = ${JSON.stringify(file)}
      const lines = require('node:readline').createInterface({ input: process.stdin })[Symbol.asyncIterator]()
      ;(async () => {
        await releaseLock(file, await acquireLock(file, 5000))
        console.log('WARM')
        await lines.next()
        const tried = native.tryAcquire(file)
        console.log('TRIED ' + tried)
        await releaseLock(file, tried)
        console.log('RELEASED')
        await lines.next()
        console.log('TRIED ' + native.tryAcquire(file))
        await lines.next()
        const lockId = await acquireLock(file, 30000)
        console.log('ACQUIRED ' + lockId)
        await releaseLock(file, lockId)
      })()`
    const holder = start('etcd-worker', [file], env)
    await holder.until(/^READY$/)
    const child = require('node:child_process').spawn(process.execPath, ['--unhandled-rejections=strict', '-e', script], {
      env: { ...process.env, ...env },
      stdio: ['pipe', 'pipe', 'inherit'],
    })
    try {
      const out = require('node:readline').createInterface({ input: child.stdout })[Symbol.asyncIterator]()
      const next = async () => (await out.next()).value
      expect(await next()).toBe('WARM')
      await redis.command('CONFIG', 'RESETSTAT')
      child.stdin.write('go\n')
      const tried = await next()
      expect(tried).toMatch(/^TRIED [0-9a-f-]{8,}$/)
      expect(await next()).toBe('RELEASED')
      // The try and the release: one EVALSHA each, nothing else.
      expect(await clientCommands()).toEqual({ evalsha: 2 })
      await acquired(holder)
      const { key } = await infoOf(holder)
      await redis.command('CONFIG', 'RESETSTAT')
      child.stdin.write('go\n')
      expect(await next()).toBe('TRIED null')
      // Refused in one round trip, and it left no place in Redis's queue behind …
      expect(await clientCommands()).toEqual({ evalsha: 1 })
      expect(Number(await redis.command('ZCARD', `${key}:q`))).toBe(0)
      // … while the acquire that follows takes its place and gets the lock on the release.
      child.stdin.write('go\n')
      await queuedInRedis(key, 1)
      holder.send('release')
      expect(await next()).toMatch(/^ACQUIRED /)
    } finally {
      child.kill('SIGKILL')
      holder.child.stdin.end()
    }
    await holder.exited
  }, 60000)

  test('a SIGKILLed waiter at the head of the queue does not stall it: the next waiter is served after the release', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const env = backend(`${redis.url}?ttl=120000&refresh=20000`)
    const holder = start('etcd-worker', [file], env)
    await holder.until(/^READY$/)
    await acquired(holder)
    const { key } = await infoOf(holder)
    const dead = start('etcd-worker', [file], env)
    await dead.until(/^READY$/)
    dead.send('acquire 60000')
    await queuedInRedis(key, 1)
    const next = start('etcd-worker', [file], env)
    await next.until(/^READY$/)
    next.send('acquire 60000')
    await queuedInRedis(key, 2)
    dead.child.kill('SIGKILL')
    await dead.exited
    const releasedAt = Date.now()
    holder.send('release')
    expect(await next.until(/^(ACQUIRED|ERR) /)).toMatch(/^ACQUIRED /)
    console.log(`redis: a dead waiter at the head of the queue held the next one up ${Date.now() - releasedAt} ms after the release`)
    for (const w of [holder, next]) w.child.stdin.end()
    await Promise.all([holder.exited, next.exited])
  }, 60000)

  /** The frozen-holder rounds (children.js) on a TTL of 1 s, `env` added to both workers'. A
   * frozen holder's connection stays open, so only the TTL can free its lock. */
  function frozenHolder(env, rounds) {
    const file = counterFile(makeProject())
    const url = `${redis.url}?ttl=1000&refresh=300`
    const [a, b] = [1, 2].map(() => start('etcd-worker', [file], { ...backend(url), ...env }))
    return frozenRounds(a, b, file, rounds)
  }

  test('a holder frozen past its TTL while another host commits: its late write is refused (ELOCKLOST), lost updates 0', async () => {
    const { lost, late } = await frozenHolder({}, FROZEN_ROUNDS)
    console.log(`redis: frozen holder, fencing on: ${FROZEN_ROUNDS} rounds, lost updates ${lost}, late writes: ${[...new Set(late)].join(', ')}`)
    expect(late).toEqual(Array(FROZEN_ROUNDS).fill('ERR ELOCKLOST'))
    expect(lost).toBe(0)
  }, 600000)

  test('with the commit check off (failpoint commit::skip_check) the same rounds lose updates', async () => {
    const binary = failpointBinary()
    const { lost, late } = await frozenHolder(failpointEnv(binary, 'commit::skip_check=return(on)'), FROZEN_ROUNDS)
    console.log(`redis: frozen holder, fencing off: ${FROZEN_ROUNDS} rounds, lost updates ${lost}`)
    expect(late).toEqual(Array(FROZEN_ROUNDS).fill('WROTE'))
    expect(lost).toBeGreaterThan(0)
  }, 900000)

  test('Redis restarted without persistence mid-run: clear errors, a whole exact file, no token reused, work resumes', async () => {
    const own = await startRedis()
    try {
      const root = makeProject()
      const file = counterFile(root)
      const marker = path.join(root, 'holder.marker')
      const updates = FULL ? 100 : 20
      const workers = [1, 2, 3].map(() => start('redis-counter', [file, updates, marker], backend(`${own.url}?ttl=3000&refresh=1000`)))
      let before
      await runCounters(workers, async () => {
        // Mid-run: once every worker has committed a quarter of its updates.
        await Promise.all(
          workers.map(async (w) => {
            for (let i = 0; i < updates / 4; i++) await w.until(/^COMMIT /)
          }),
        )
        await own.restart()
        before = linesOf(workers, 'COMMIT ').length
      })
      const errors = linesOf(workers, 'ERR ')
      const overlaps = linesOf(workers, 'OVERLAP')
      console.log(
        `redis: restarted after ${before} commits; ${3 * updates - before} after; ${errors.length} errors retried (${codesOf(errors).join(', ') || 'none'}); ` +
          `${overlaps.length} holds found the old holder's marker (its lock had vanished with the server: its write was refused)`,
      )
      expect(3 * updates - before).toBeGreaterThan(0)
      for (const line of errors) {
        expect(line).toMatch(/^ERR (ELOCKBACKEND|ELOCKLOST) /)
        if (line.startsWith('ERR ELOCKBACKEND')) expect(line).toContain(`127.0.0.1:${own.port}`)
      }
      expectExactHistory(file, 3 * updates, workers)
    } finally {
      await own.stop()
    }
  }, 240000)

  test('Redis unreachable: ELOCKBACKEND naming the address, within the caller’s timeout', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const port = await freePort()
    const worker = start('etcd-worker', [file], backend(`redis://127.0.0.1:${port}?ttl=2000&refresh=500`))
    const exited = await askUnreachable(worker, `127.0.0.1:${port}`, (line, ms) =>
      console.log(`redis: unreachable server answered after ${ms} ms (caller timeout 10000 ms): ${line}`),
    )
    expect(exited).toEqual({ code: 0, signal: null })
  }, 60000)

  test('a server that stops answering holds the caller no longer than its timeout, even on the uncontended path', async () => {
    // The uncontended acquire asks Redis on Node's own thread over an idle pooled connection;
    // with a command timeout far beyond the test's, only the caller's timeout can end that wait.
    const own = await startRedis()
    const root = makeProject()
    const file = counterFile(root)
    const worker = start('etcd-worker', [file], backend(`${own.url}?ttl=2000&refresh=500&commandTimeout=600000`))
    try {
      await worker.until(/^READY$/)
      worker.send('acquire 10000')
      await worker.until(/^ACQUIRED /)
      worker.send('release')
      await worker.until(/^RELEASED true$/)
      process.kill(own.pid, 'SIGSTOP')
      worker.send('acquire 500')
      const line = await worker.until(/^(ACQUIRED|ERR) /)
      expect(line).toMatch(/^ERR ELOCKBACKEND /)
      expect(line).toContain(`127.0.0.1:${own.port}`)
    } finally {
      if (own.pid) process.kill(own.pid, 'SIGCONT')
      worker.child.kill('SIGKILL')
      await own.stop()
    }
  }, 60000)

  // A waiter's timeout names the holder, which for a lock server is a question to the server.
  // Asked on the one thread that expires every waiter of the process, a server that does not
  // answer held up every other timeout of the process, of any backend, for as long; asked on one
  // thread shared by every lock server, it still held up the timeouts of the other servers.
  const otherLocks = {
    'a file lock': async () => {
      const file = path.join(makeProject(), '.flowforge', 'tasks.json')
      const holder = start('hold-lock', [file])
      await holder.until(/^LOCKED /)
      return { file, holder, stop: async () => {} }
    },
    'a lock on another server': async () => {
      const other = await startRedis()
      const file = servedBy(other.url)
      const holder = start('etcd-worker', [file], backend(other.url))
      await holder.until(/^READY$/)
      await acquired(holder)
      return { file, holder, stop: () => other.stop() }
    },
  }

  test.each(Object.keys(otherLocks))("a timeout on a server that stops answering does not hold up this process's other timeouts: %s", async (other) => {
    const { acquireLock } = require('../file-lock')
    const own = await startRedis()
    const url = `${own.url}?commandTimeout=600000`
    const onServer = servedBy(url)
    const serverHolder = start('etcd-worker', [onServer], backend(url))
    const elsewhere = await otherLocks[other]()
    let onServerWait
    try {
      await serverHolder.until(/^READY$/)
      serverHolder.send('acquire 10000')
      await serverHolder.until(/^ACQUIRED /)
      // Queued behind the server's holder (the try before it was answered: taken), then the
      // server stops answering; this wait's deadline comes first.
      onServerWait = acquireLock(onServer, 1000).catch((e) => e)
      process.kill(own.pid, 'SIGSTOP')
      const elsewhereWait = await acquireLock(elsewhere.file, 2000).catch((e) => e)
      // Before, this wait was answered only once the server answered again (never, here).
      expect(elsewhereWait.code).toBe('ELOCKTIMEOUT')
    } finally {
      process.kill(own.pid, 'SIGCONT')
      serverHolder.child.kill('SIGKILL')
      elsewhere.holder.child.kill('SIGKILL')
    }
    expect((await onServerWait).code).toBe('ELOCKTIMEOUT')
    await elsewhere.stop()
    await own.stop()
  }, 60000)

  // Each hold's lease is renewed by this process's heartbeat thread: a renewal that waits on a
  // server that stopped answering must not keep another server's leases from being renewed.
  test("a server that stops answering does not cost this process its leases on another server", async () => {
    const { acquireLock, releaseLock, assertHeld } = require('../file-lock')
    const [frozen, healthy] = await Promise.all([startRedis(), startRedis()])
    const onFrozen = servedBy(`${frozen.url}?ttl=3000&refresh=500&commandTimeout=600000`)
    const healthyUrl = `${healthy.url}?ttl=3000&refresh=500`
    const onHealthy = servedBy(healthyUrl)
    const other = start('etcd-worker', [onHealthy], backend(healthyUrl))
    try {
      await acquireLock(onFrozen)
      const held = await acquireLock(onHealthy)
      await other.until(/^READY$/)
      process.kill(frozen.pid, 'SIGSTOP')
      // Over two lease times: the lease on the healthy server must still be ours then.
      other.send('acquire 7000')
      expect(await other.until(/^(ACQUIRED|ERR) /)).toMatch(/^ERR ELOCKTIMEOUT /)
      expect(() => assertHeld(onHealthy, held)).not.toThrow()
      await releaseLock(onHealthy, held)
    } finally {
      process.kill(frozen.pid, 'SIGCONT')
      other.child.kill('SIGKILL')
      await Promise.all([frozen.stop(), healthy.stop()])
    }
  }, 60000)
})

describe('Redis backend behind a proxy that delays and drops', () => {
  let redis
  beforeAll(async () => {
    redis = await startRedis()
  }, 60000)
  afterAll(() => redis && redis.stop())

  test('a holder cut off by the proxy learns it lost the lease (AbortSignal, then ELOCKLOST); another takes it', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const proxy = await redisProxy(redis.port)
    try {
      const cutOff = start('etcd-worker', [file], backend(proxy.url('ttl=2000&refresh=500')))
      const other = start('etcd-worker', [file], backend(`${redis.url}?ttl=2000&refresh=500`))
      await cutOffHolder(cutOff, other, proxy, (lost) => {
        console.log(`redis: cut-off holder says: ${lost}`)
        expect(lost).toMatch(/^LOST ELOCKLOST /)
      })
    } finally {
      proxy.close()
    }
  }, 60000)

  test('3 workers, each behind a proxy that delays every chunk and now and then drops everything: never two holders, exact file', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const marker = path.join(root, 'holder.marker')
    const updates = FULL ? 60 : 15
    const ttl = 2000
    const proxies = await Promise.all([1, 2, 3].map(() => redisProxy(redis.port)))
    try {
      for (const p of proxies) p.delay(20)
      const workers = proxies.map((p) => start('redis-counter', [file, updates, marker, 60000], backend(p.url(`ttl=${ttl}&refresh=500`))))
      let drops = 0
      let finished = false
      // The fault schedule: a drop lasts 1.5 TTLs, so a holder behind it is past its own
      // deadline, and its lease past Redis's TTL, before its dead connection is closed (a reset
      // within the TTL would hand the lock over at once, which is the SIGKILL case above). The
      // first drop cuts off the first worker to hold as soon as it says so (not after a fixed
      // delay, which a slow box could outlast with no fault at all); later ones every 700 ms.
      const firstHolder = Promise.race(workers.map((w, i) => w.until(/^TOKEN /).then(() => i)))
      const chaos = (async () => {
        let i = await firstHolder
        while (!finished) {
          const p = proxies[i++ % proxies.length]
          p.drop()
          drops++
          await new Promise((resolve) => setTimeout(resolve, ttl * 1.5))
          p.heal()
          await new Promise((resolve) => setTimeout(resolve, 700))
        }
      })()
      await runCounters(workers)
      finished = true
      await chaos
      const errors = linesOf(workers, 'ERR ')
      console.log(`redis: behind proxies, ${drops} drops; ${errors.length} failed attempts retried (${codesOf(errors).join(', ') || 'none'})`)
      expect(drops).toBeGreaterThan(0)
      expect(linesOf(workers, 'OVERLAP')).toEqual([])
      for (const line of errors) expect(line).toMatch(/^ERR (ELOCKLOST|ELOCKBACKEND|ELOCKTIMEOUT) /)
      expectExactHistory(file, 3 * updates, workers)
    } finally {
      for (const p of proxies) p.close()
    }
  }, 300000)
})

describe('CLI with the Redis backend', () => {
  let redis
  beforeAll(async () => {
    redis = await startRedis()
  }, 60000)
  afterAll(() => redis && redis.stop())

  test('status lists the Redis lock: holder pid, user, host, token, TTL left, queue length', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    fs.writeFileSync(file, '{}')
    const env = backend(`${redis.url}?ttl=30000&refresh=5000`)
    const holder = start('etcd-worker', [file], env)
    const waiter = start('etcd-worker', [file], env)
    await Promise.all([holder.until(/^READY$/), waiter.until(/^READY$/)])
    const token = await acquired(holder)
    waiter.send('acquire 30000')
    await untilQueued(holder)
    const json = start('status', ['status', '--json', root], env, { cli: true })
    const { code } = await json.exited
    expect(code).toBe(0)
    const { locks } = JSON.parse(json.lines.join('\n'))
    const row = locks.find((l) => l.state === 'held')
    // Held in Redis, so not listed again as a free critical file.
    expect(locks.filter((l) => path.basename(l.file) === 'tasks.json')).toHaveLength(1)
    expect(row).toMatchObject({ pid: holder.child.pid, token, queueLength: 1 })
    expect(row.user).toEqual(expect.any(String))
    expect(row.host).toEqual(expect.any(String))
    expect(row.ttlLeftMs).toBeGreaterThan(0)
    const text = start('status', ['status', root], { ...env, NO_COLOR: '1' }, { cli: true })
    expect((await text.exited).code).toBe(0)
    const out = text.lines.join('\n')
    expect(out).toMatch(/TOKEN/)
    expect(out).toMatch(/TTL LEFT/)
    expect(out).toMatch(/QUEUE/)
    expect(out).toContain(String(token))
    holder.send('release')
    await waiter.until(/^ACQUIRED /)
    for (const w of [holder, waiter]) w.child.stdin.end()
    await Promise.all([holder.exited, waiter.exited])
  }, 60000)

  test('doctor checks the connection and the server version; an unreachable server is a problem naming it', async () => {
    const root = makeProject()
    const ok = start('doctor', ['doctor', root], { ...backend(redis.url), NO_COLOR: '1' }, { cli: true })
    const okExit = await ok.exited
    const okOut = ok.lines.join('\n')
    expect(okExit.code).toBe(0)
    expect(okOut).toMatch(/Redis .*127\.0\.0\.1.* answers, version \d+\.\d+/)
    const port = await freePort()
    const bad = start('doctor', ['doctor', root], { ...backend(`redis://127.0.0.1:${port}`), NO_COLOR: '1' }, { cli: true })
    const badExit = await bad.exited
    expect(badExit.code).not.toBe(0)
    expect(bad.lines.join('\n')).toContain(`127.0.0.1:${port}`)
  }, 60000)

  /** Whether `pid` can still run code: it exists, is not a zombie, and no SIGKILL waits for it. */
  function canRun(pid) {
    let status
    try {
      status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
    } catch {
      return false
    }
    const field = (name) => (status.match(new RegExp(`^${name}:\\s*(.*)$`, 'm')) || [])[1] || ''
    const killPending = ['SigPnd', 'ShdPnd'].some((f) => (BigInt(`0x${field(f) || '0'}`) & (1n << 8n)) !== 0n)
    return !/^[ZX]/.test(field('State')) && !killPending
  }

  test('exec: when the wrapper is SIGKILLed, its command does not run on beside the next holder', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    fs.writeFileSync(file, '{}')
    // A TTL far beyond the next holder's timeout: the lock passes on because the wrapper's
    // connection closed, at once.
    const url = `${redis.url}?ttl=120000&refresh=20000`
    const run = start('exec', ['exec', file, '--', 'sh', '-c', 'echo "CHILD $$"; exec tail -f /dev/null'], backend(url), { cli: true })
    const pid = Number((await run.until(/^CHILD /)).split(' ')[1])
    const next = start('etcd-worker', [file], backend(url))
    await next.until(/^READY$/)
    // 'exit', not 'close': the command keeps the wrapper's stdout open while it runs.
    const wrapperGone = new Promise((resolve) => run.child.on('exit', (code, signal) => resolve(signal)))
    run.child.kill('SIGKILL')
    expect(await wrapperGone).toBe('SIGKILL')
    next.send('acquire 30000')
    const line = await next.until(/^(ACQUIRED|ERR) /)
    const commandRuns = canRun(pid)
    if (commandRuns) process.kill(pid, 'SIGKILL')
    expect(line).toMatch(/^ACQUIRED /)
    expect({ commandRunsBesideTheNextHolder: commandRuns }).toEqual({ commandRunsBesideTheNextHolder: false })
    next.send('release')
    await next.until(/^RELEASED true$/)
    next.child.stdin.end()
    await next.exited
  }, 60000)

  test.each([
    ['stops on SIGTERM', ''],
    ['ignores SIGTERM (SIGKILL follows)', "trap '' TERM; "],
  ])('exec: a lost Redis lock stops the child and exits 75: a child that %s', async (_, ignoreTerm) => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    fs.writeFileSync(file, '{}')
    const proxy = await redisProxy(redis.port)
    try {
      // The child says its pid, then runs until it is stopped (an ignored SIGTERM stays ignored across exec).
      const run = start('exec', ['exec', file, '--', 'sh', '-c', `${ignoreTerm}echo "CHILD $$"; exec tail -f /dev/null`], backend(proxy.url('ttl=2000&refresh=500')), { cli: true })
      const pid = Number((await run.until(/^CHILD /)).split(' ')[1])
      proxy.drop()
      const { code } = await run.exited
      console.log(`redis: exec after the loss: exit ${code}; ${run.stderr().trim()}`)
      expect(code).toBe(75)
      expect(run.stderr()).toMatch(/lost/)
      expect(() => process.kill(pid, 0)).toThrow(expect.objectContaining({ code: 'ESRCH' }))
    } finally {
      proxy.close()
    }
  }, 60000)
})
