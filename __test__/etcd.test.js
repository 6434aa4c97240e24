'use strict'
// The etcd backend end to end (issue 13's figures), against real etcd processes: children select
// it with FLOWFORGE_LOCK_BACKEND=etcd://…, and every dangerous instant is an event a child
// prints (READ, ACQUIRED, TOKEN …), never a sleep. Small counts by default; FFL_ETCD_FULL=1
// runs the full counts (4 hosts × 200 updates, 5 frozen-holder rounds).
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { makeProject } = require('./helpers')
const { startEtcd, startEtcdCluster } = require('./etcd-server')
const { failpointBinary, failpointEnv } = require('./failpoint-binary')
const { childStarter } = require('./children')

const FULL = process.env.FFL_ETCD_FULL === '1'
const HOST_UPDATES = FULL ? 200 : 30
const FROZEN_ROUNDS = FULL ? 5 : 2
const canUnshare = process.getuid() === 0 && spawnSync('unshare', ['--uts', 'true']).status === 0

const start = childStarter()

function counterFile(root, count = 0) {
  const file = path.join(root, 'counter.json')
  fs.writeFileSync(file, JSON.stringify({ count }))
  return file
}

const count = (file) => JSON.parse(fs.readFileSync(file, 'utf8')).count
const tokensOf = (worker) => worker.lines.filter((l) => l.startsWith('TOKEN ')).map((l) => Number(l.split(' ')[1]))
const backend = (url) => ({ FLOWFORGE_LOCK_BACKEND: url })

/** Runs counter workers to the end: every one prints DONE. */
async function runCounters(workers) {
  await Promise.all(workers.map((w) => w.until(/^READY$/)))
  for (const w of workers) w.send('go')
  await Promise.all(workers.map((w) => w.until(/^DONE /)))
  for (const w of workers) w.child.stdin.end()
  await Promise.all(workers.map((w) => w.exited))
}

function expectNoOverlapAndFreshTokens(workers) {
  for (const w of workers) expect(w.lines.filter((l) => l.startsWith('OVERLAP'))).toEqual([])
  const all = workers.flatMap(tokensOf)
  expect(all.every((t) => Number.isInteger(t) && t > 0)).toBe(true)
  expect(new Set(all).size).toBe(all.length)
  for (const w of workers) {
    const mine = tokensOf(w)
    expect(mine).toEqual([...mine].sort((a, b) => a - b))
  }
}

describe('etcd backend, one member', () => {
  let etcd
  beforeAll(async () => {
    etcd = await startEtcd()
  }, 120000)
  afterAll(() => etcd && etcd.stop())

  test('4 hosts × N locked read-increment-writes of one file: exact, never two holders', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const marker = path.join(root, 'holder.marker')
    if (!canUnshare) console.log('etcd hosts test: not root (or no unshare): the 4 workers share this hostname')
    const workers = [1, 2, 3, 4].map((i) =>
      start('etcd-counter', [file, HOST_UPDATES, marker], backend(etcd.url('ttl=5000&refresh=1000')), {
        host: canUnshare ? `ffl-host-${i}` : undefined,
      }),
    )
    const started = Date.now()
    await runCounters(workers)
    console.log(`etcd: 4 hosts × ${HOST_UPDATES} updates in ${Date.now() - started} ms`)
    expect(workers.map((w) => w.lines.find((l) => l.startsWith('DONE')))).toEqual(Array(4).fill(`DONE ${HOST_UPDATES}`))
    expect(count(file)).toBe(4 * HOST_UPDATES)
    expectNoOverlapAndFreshTokens(workers)
    if (canUnshare) {
      const hosts = workers.map((w) => w.lines.find((l) => l.startsWith('HOST ')))
      expect(new Set(hosts).size).toBe(4)
    }
  }, 240000)

  test('a SIGKILLed holder is replaced once its lease runs out, by a higher token', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const url = etcd.url('ttl=2000&refresh=500')
    const holder = start('etcd-worker', [file], backend(url))
    const next = start('etcd-worker', [file], backend(url))
    await Promise.all([holder.until(/^READY$/), next.until(/^READY$/)])
    holder.send('acquire 5000')
    const first = Number((await holder.until(/^ACQUIRED /)).split(' ')[2])
    next.send('acquire 30000')
    // The waiter is queued in etcd (the lock's queue shows it) before the kill.
    for (;;) {
      holder.send('info')
      if (JSON.parse((await holder.until(/^INFO /)).slice(5)).queueLength >= 1) break
    }
    const killedAt = Date.now()
    holder.child.kill('SIGKILL')
    expect(await holder.exited).toEqual({ code: null, signal: 'SIGKILL' })
    const second = Number((await next.until(/^ACQUIRED /)).split(' ')[2])
    console.log(`etcd: SIGKILLed holder replaced after ${Date.now() - killedAt} ms (ttl 2000 ms)`)
    expect(next.lines.filter((l) => l.startsWith('ACQUIRED'))).toHaveLength(1)
    expect(second).toBeGreaterThan(first)
    next.send('release')
    await next.until(/^RELEASED true$/)
    next.child.stdin.end()
    await next.exited
  }, 60000)

  /**
   * Rounds of: A takes the lock and reads; A is frozen (SIGSTOP) past its lease; B, waiting,
   * gets the lock and commits an increment; A resumes and writes its increment of the old
   * value. Lost updates = increments reported done − the final count.
   */
  async function frozenRounds(env, rounds) {
    const root = makeProject()
    const file = counterFile(root)
    const url = etcd.url('ttl=1000&refresh=300')
    const a = start('etcd-worker', [file], { ...backend(url), ...env })
    const b = start('etcd-worker', [file], { ...backend(url), ...env })
    await Promise.all([a.until(/^READY$/), b.until(/^READY$/)])
    let done = 0
    const late = []
    for (let round = 0; round < rounds; round++) {
      a.send('acquire 30000')
      await a.until(/^ACQUIRED /)
      a.send('read')
      const seen = Number((await a.until(/^READ /)).split(' ')[1])
      a.child.kill('SIGSTOP')
      b.send('inc 30000')
      await b.until(/^(INC|ERR) /)
      done += 1
      a.child.kill('SIGCONT')
      a.send(`write ${seen + 1}`)
      const outcome = await a.until(/^(WROTE|ERR) /)
      late.push(outcome.startsWith('WROTE') ? 'WROTE' : outcome.split(' ').slice(0, 2).join(' '))
      if (outcome.startsWith('WROTE')) done += 1
      a.send('release')
      await a.until(/^RELEASED /)
    }
    for (const w of [a, b]) w.child.stdin.end()
    await Promise.all([a.exited, b.exited])
    expect(b.lines.filter((l) => l.startsWith('INC'))).toHaveLength(rounds)
    return { lost: done - count(file), late, a }
  }

  test('a frozen holder’s late write is refused (ELOCKLOST): lost-update checker reads 0', async () => {
    const { lost, late } = await frozenRounds({}, FROZEN_ROUNDS)
    console.log(`etcd: frozen holder, fencing on: ${FROZEN_ROUNDS} rounds, lost updates ${lost}, late writes: ${late.join(', ')}`)
    expect(late).toEqual(Array(FROZEN_ROUNDS).fill('ERR ELOCKLOST'))
    expect(lost).toBe(0)
  }, 120000)

  test('with the commit check off (failpoint commit::skip_check) the same rounds lose updates', async () => {
    const binary = failpointBinary()
    const { lost, late } = await frozenRounds(failpointEnv(binary, 'commit::skip_check=return(on)'), FROZEN_ROUNDS)
    console.log(`etcd: frozen holder, fencing off: ${FROZEN_ROUNDS} rounds, lost updates ${lost}, late writes: ${late.join(', ')}`)
    expect(late).toEqual(Array(FROZEN_ROUNDS).fill('WROTE'))
    expect(lost).toBeGreaterThan(0)
  }, 600000)

  test('etcd unreachable: ELOCKBACKEND naming the endpoint, after the URL’s timeout (below the caller’s)', async () => {
    const root = makeProject()
    const file = counterFile(root)
    // A port nobody listens on: bound, then closed.
    const port = await new Promise((resolve) => {
      const server = net.createServer().listen(0, '127.0.0.1', () => {
        const { port } = server.address()
        server.close(() => resolve(port))
      })
    })
    const worker = start('etcd-worker', [file], backend(`etcd://127.0.0.1:${port}?ttl=2000&timeout=1500`))
    await worker.until(/^READY$/)
    const asked = Date.now()
    worker.send('acquire 10000')
    const line = await worker.until(/^(ACQUIRED|ERR) /)
    console.log(`etcd: unreachable endpoint answered ELOCKBACKEND after ${Date.now() - asked} ms (caller timeout 10000 ms)`)
    expect(line).toMatch(/^ERR ELOCKBACKEND /)
    expect(line).toContain(`127.0.0.1:${port}`)
    worker.child.stdin.end()
    await worker.exited
  }, 60000)
})

/**
 * A TCP proxy in front of one member: `cut()` stops forwarding both ways and answers no new
 * connection (a partition, not a reset: the client only sees silence).
 */
async function proxyTo(target) {
  const [host, port] = target.split(':')
  const sockets = new Set()
  let cut = false
  const server = net.createServer((client) => {
    if (cut) return sockets.add(client)
    const upstream = net.connect(Number(port), host)
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on('error', () => {})
    }
    client.on('data', (d) => !cut && upstream.write(d))
    upstream.on('data', (d) => !cut && client.write(d))
    client.on('close', () => upstream.destroy())
    upstream.on('close', () => client.destroy())
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    endpoint: `127.0.0.1:${server.address().port}`,
    cut() {
      cut = true
    },
    close() {
      for (const s of sockets) s.destroy()
      server.close()
    },
  }
}

describe('etcd backend, three-member cluster', () => {
  let cluster
  beforeAll(async () => {
    cluster = await startEtcdCluster()
  }, 120000)
  afterAll(() => cluster && cluster.stop())

  test('a client cut off from its member by a proxy loses the lock and says so; another takes it', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const proxy = await proxyTo(cluster.endpoints[0])
    try {
      const cutOff = start('etcd-worker', [file], backend(`etcd://${proxy.endpoint}?ttl=2000&refresh=500&timeout=1000`))
      const other = start('etcd-worker', [file], backend(`etcd://${cluster.endpoints[1]}?ttl=2000&refresh=500`))
      await Promise.all([cutOff.until(/^READY$/), other.until(/^READY$/)])
      cutOff.send('hold 5000')
      const first = Number((await cutOff.until(/^HOLDING /)).split(' ')[2])
      other.send('acquire 30000')
      proxy.cut()
      // The holder's AbortSignal aborts with ELOCKLOST; the check a write would make refuses.
      const lost = await cutOff.until(/^LOST /)
      console.log(`etcd: cut-off client says: ${lost}`)
      expect(lost).toMatch(/^LOST ELOCKLOST .*(could not be renewed in time|expired)/)
      expect(await cutOff.until(/^(HELD|ERR) /)).toMatch(/^ERR ELOCKLOST /)
      const second = Number((await other.until(/^ACQUIRED /)).split(' ')[2])
      expect(second).toBeGreaterThan(first)
      cutOff.child.kill('SIGKILL')
      other.child.stdin.end()
      await Promise.all([cutOff.exited, other.exited])
    } finally {
      proxy.close()
    }
  }, 60000)

  test('the leader killed mid-run: never two holders, work resumes, no token reused', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const marker = path.join(root, 'holder.marker')
    const updates = FULL ? 100 : 20
    const url = cluster.url('ttl=3000&refresh=1000')
    const workers = [1, 2, 3].map(() => start('etcd-counter', [file, updates, marker], backend(url)))
    await Promise.all(workers.map((w) => w.until(/^READY$/)))
    for (const w of workers) w.send('go')
    // Mid-run: once every worker has done a quarter of its updates.
    await Promise.all(
      workers.map(async (w) => {
        for (let i = 0; i < updates / 4; i++) await w.until(/^TOKEN /)
      }),
    )
    const leader = await cluster.leader()
    const before = workers.map((w) => tokensOf(w).length)
    await leader.kill()
    await Promise.all(workers.map((w) => w.until(/^DONE /)))
    for (const w of workers) w.child.stdin.end()
    await Promise.all(workers.map((w) => w.exited))
    const after = workers.reduce((n, w, i) => n + tokensOf(w).length - before[i], 0)
    const errors = workers.flatMap((w) => w.lines.filter((l) => l.startsWith('ERR ')))
    console.log(`etcd: leader ${leader.name} killed after ${before.reduce((a, b) => a + b)} holds; ${after} holds after; ${errors.length} retried errors ${[...new Set(errors.map((e) => e.split(' ')[1]))].join(',')}`)
    expect(after).toBeGreaterThan(0)
    expect(count(file)).toBe(3 * updates)
    expectNoOverlapAndFreshTokens(workers)
  }, 180000)
})
